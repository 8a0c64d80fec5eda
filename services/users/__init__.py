"""users service: Contacts and their identities (OneID), WeCom and webhook ingestion, consent.

Other services read from it only through functions exported here, and
otherwise talk to it through events.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.scope import register_contact_resolver

if TYPE_CHECKING:
    from uuid import UUID

    from sqlalchemy.ext.asyncio import AsyncSession

    from shared.apikeys import Principal

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


async def contact_in_scope(session: AsyncSession, principal: Principal, contact_id: UUID) -> bool:
    """Whether `principal` may read and change this contact of its tenant: staff only the
    contacts they own or follow, every other tenant role all of them (merged and erased
    contacts included, as their own routes answer them). The rule of every
    contact-keyed route, through `shared.scope.contact_in_scope`."""
    from services.users.service import contact_visible

    return await contact_visible(session, principal, contact_id)


# Every service's contact-keyed routes ask this package who sees which contact.
register_contact_resolver(contact_in_scope)
