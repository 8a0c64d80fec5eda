"""When two contacts turn out to be one person, the points follow the survivor.

The merged contact's remaining lots move to the survivor with their earning
and expiry dates (an `adjustment` out of one account, one in to the other per
lot), its debt follows, and the survivor keeps the higher tier. The ledgers of
both stay whole: nothing is rewritten.
"""

from __future__ import annotations

import uuid

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.points.ledger import booking, expiry, repository
from services.points.ledger.repository import LockedAccount
from services.points.rules.service import load_rules
from shared.events import Event, subscribe


async def follow_merge(
    session: AsyncSession, tenant_id: uuid.UUID, survivor_id: uuid.UUID, merged_id: uuid.UUID
) -> int:
    """Move the merged contact's points to the survivor; the points moved."""
    existing = await repository.account_row(session, tenant_id, merged_id)
    if existing is None:
        return 0
    # Both accounts locked, lower id first (the order everyone uses).
    first, second = sorted([survivor_id, merged_id], key=str)
    locked = {
        first: await repository.lock_account(session, tenant_id, first),
        second: await repository.lock_account(session, tenant_id, second),
    }
    survivor, merged = locked[survivor_id], locked[merged_id]
    expired = await expiry.expire_account(session, merged.id)
    if expired:
        object.__setattr__(merged, "balance", merged.balance - expired)
    lots = (
        await session.execute(
            text(
                "SELECT id, remaining, earned_at, expires_at, order_id FROM points_lots"
                " WHERE account_id = :a AND remaining > 0 ORDER BY earned_at, id"
            ),
            {"a": merged.id},
        )
    ).all()
    moved = 0
    for lot in lots:
        out = await booking.spend(
            session,
            merged,
            int(lot.remaining),
            kind="adjustment",
            source_key=f"merge-out:{merged_id}:{lot.id}",
            reason=f"merged into contact {survivor_id}",
            details={"merged_into": str(survivor_id), "lot_id": lot.id},
        )
        if out.replayed:
            continue
        await booking.earn(
            session,
            survivor,
            int(lot.remaining),
            kind="adjustment",
            expires_at=lot.expires_at,
            earned_at=lot.earned_at,
            order_id=lot.order_id,
            source_key=f"merge-in:{merged_id}:{lot.id}",
            reason=f"from merged contact {merged_id}",
            details={"merged_from": str(merged_id), "lot_id": lot.id},
        )
        moved += int(lot.remaining)
    if merged.debt:
        await _move_debt(session, merged, survivor, merged_id, survivor_id)
    await _keep_higher_tier(session, tenant_id, survivor, merged)
    return moved


async def _move_debt(
    session: AsyncSession,
    merged: LockedAccount,
    survivor: LockedAccount,
    merged_id: uuid.UUID,
    survivor_id: uuid.UUID,
) -> None:
    debt = merged.debt
    await booking.clawback(
        session,
        survivor,
        debt,
        source_key=f"merge-debt-in:{merged_id}",
        reason=f"points owed by merged contact {merged_id}",
        details={"merged_from": str(merged_id)},
    )
    # The merged account no longer owes it: a zero-point entry that settles its debt.
    written = await repository.insert_entry(
        session,
        booking.entry_values(
            merged,
            "adjustment",
            0,
            merged.balance,
            debt_delta=-debt,
            reason=f"debt moved to contact {survivor_id}",
            source_key=f"merge-debt-out:{merged_id}",
        ),
    )
    if written is not None:
        await repository.update_account(session, merged.id, balance=merged.balance, debt=0)


async def _keep_higher_tier(
    session: AsyncSession, tenant_id: uuid.UUID, survivor: LockedAccount, merged: LockedAccount
) -> None:
    rules = await load_rules(session, tenant_id)
    if merged.tier and rules.rules.rank(merged.tier) > rules.rules.rank(survivor.tier):
        await session.execute(
            text(
                "UPDATE points_accounts SET tier = :tier,"
                " tier_since = (SELECT tier_since FROM points_accounts WHERE id = :m)"
                " WHERE id = :s"
            ),
            {"tier": merged.tier, "m": merged.id, "s": survivor.id},
        )


@subscribe("points", "contact.merged", name="points.follow_merge")
async def on_contact_merged(session: AsyncSession, event: Event) -> None:
    if event.tenant_id is None:
        return
    await follow_merge(
        session,
        event.tenant_id,
        uuid.UUID(str(event.payload["survivor_id"])),
        uuid.UUID(str(event.payload["merged_id"])),
    )
