"""Who points may move for: a live contact of the tenant, asked of the users service."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from services.points.exceptions import UnknownContact
from services.users import contact_status


async def require_live_member(
    session: AsyncSession, tenant_id: uuid.UUID, contact_id: uuid.UUID
) -> None:
    """Raise UnknownContact unless the contact is live (merged: use the survivor; erased:
    no more points, tiers or benefits)."""
    found = await contact_status(session, tenant_id, contact_id)
    if found != "active":
        raise UnknownContact(found)
