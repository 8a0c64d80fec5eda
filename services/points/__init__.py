"""points service: Points ledger, earning rules, redemption, expiry, tiers and benefits.

Other services read from it only through functions exported here, and
otherwise talk to it through events.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

SERVICE = "points"


async def message_facts(
    session: AsyncSession, tenant_id: uuid.UUID, contact_ids: Collection[uuid.UUID], now: datetime
) -> dict[uuid.UUID, dict[str, object]]:
    """For each member among these contacts: `points_balance`, and the points that
    expire first after `now` (`expiring_points`, `expiring_at`, or None), for
    rendering a message to them."""
    from sqlalchemy import func, select

    from services.points.models import PointsAccount, PointsLot

    if not contact_ids:
        return {}
    accounts = (
        await session.execute(
            select(PointsAccount.id, PointsAccount.contact_id, PointsAccount.balance).where(
                PointsAccount.tenant_id == tenant_id,
                PointsAccount.contact_id.in_(list(contact_ids)),
            )
        )
    ).all()
    if not accounts:
        return {}
    first = (
        select(PointsLot.account_id, func.min(PointsLot.expires_at).label("at"))
        .where(
            PointsLot.account_id.in_([a.id for a in accounts]),
            PointsLot.remaining > 0,
            PointsLot.expires_at > now,
        )
        .group_by(PointsLot.account_id)
        .subquery()
    )
    expiring = {
        row.account_id: (int(row.points), row.at)
        for row in await session.execute(
            select(first.c.account_id, first.c.at, func.sum(PointsLot.remaining).label("points"))
            .join(
                PointsLot,
                (PointsLot.account_id == first.c.account_id)
                & (PointsLot.expires_at == first.c.at)
                & (PointsLot.remaining > 0),
            )
            .group_by(first.c.account_id, first.c.at)
        )
    }
    out: dict[uuid.UUID, dict[str, object]] = {}
    for account in accounts:
        points, at = expiring.get(account.id, (None, None))
        out[account.contact_id] = {
            "points_balance": int(account.balance),
            "expiring_points": points,
            "expiring_at": at,
        }
    return out
