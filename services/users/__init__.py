"""users service: Contacts and their identities (OneID), WeCom and webhook ingestion, consent.

Other services read from it only through functions exported here, and
otherwise talk to it through events.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from uuid import UUID

    from sqlalchemy.ext.asyncio import AsyncSession

SERVICE = "users"


async def contact_status(session: AsyncSession, tenant_id: UUID, contact_id: UUID) -> str:
    """'active', 'merged:<survivor id>', 'erased' or 'missing': what other services may
    ask of a contact before acting on it."""
    from sqlalchemy import select

    from services.users.models import Contact

    row = (
        await session.execute(
            select(Contact.merged_into_id, Contact.erased_at).where(
                Contact.tenant_id == tenant_id, Contact.id == contact_id
            )
        )
    ).first()
    if row is None:
        return "missing"
    if row.merged_into_id is not None:
        return f"merged:{row.merged_into_id}"
    return "erased" if row.erased_at is not None else "active"
