"""SQL of the profile endpoint: a contact's profile row, tags and segments."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

# -- the profile endpoint ------------------------------------------------------------------


async def profile_row(
    session: AsyncSession, tenant_id: uuid.UUID, contact_id: uuid.UUID
) -> dict[str, Any] | None:
    row = (
        await session.execute(
            text("SELECT * FROM tagging_profiles WHERE tenant_id = :tenant AND contact_id = :c"),
            {"tenant": tenant_id, "c": contact_id},
        )
    ).first()
    return None if row is None else dict(row._mapping)


async def contact_tags(
    session: AsyncSession, tenant_id: uuid.UUID, contact_id: uuid.UUID, now: datetime
) -> list[dict[str, Any]]:
    """The contact's tags with their weights at `now` (those not yet dropped)."""
    rows = await session.execute(
        text(
            """
            SELECT ct.tag_id, t.group_id, t.name, g.name AS group_name, ct.source,
                   tag_weight(ct.weight, ct.weighted_at, ct.half_life_days, :now) AS weight
              FROM contact_tags ct
              JOIN tags t ON t.id = ct.tag_id
              JOIN tag_groups g ON g.id = t.group_id
             WHERE ct.tenant_id = :tenant AND ct.contact_id = :c
               AND (ct.drops_at IS NULL OR ct.drops_at > :now)
             ORDER BY g.name, t.name
            """
        ),
        {"tenant": tenant_id, "c": contact_id, "now": now},
    )
    return [dict(row._mapping) for row in rows]


async def contact_segments(
    session: AsyncSession, tenant_id: uuid.UUID, contact_id: uuid.UUID
) -> list[dict[str, Any]]:
    rows = await session.execute(
        text(
            """
            SELECT m.segment_id, s.name, m.entered_at
              FROM segment_members m JOIN segments s ON s.id = m.segment_id
             WHERE m.tenant_id = :tenant AND m.contact_id = :c AND s.tenant_id = :tenant
             ORDER BY s.name
            """
        ),
        {"tenant": tenant_id, "c": contact_id},
    )
    return [dict(row._mapping) for row in rows]
