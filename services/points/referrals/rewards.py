"""Paying the referral programme's rewards, each once, and clawing them back.

Every reward is a `referral_rewards` row with a unique `reward_key` written before
anything is paid, so a reward asked for twice (a redelivered event, a job run again,
concurrent requests) is paid once. A points reward is a ledger earning whose source
key is the reward key; a coupon or an item is recorded here (an item takes a unit of
its catalog stock) and published as `referral.reward_granted` for the shop to issue.
An item not in the catalog, inactive or out of stock stays `owed` and is granted by
the hold job when it can be.

A clawback takes the reward back through the ledger: its points, or a coupon's or an
item's value in points (a coupon's value at the tenant's points_per_yuan_off, an
item's points cost); what the balance cannot cover becomes a debt, settled from
later earnings (the ledger's debt rules).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.points.catalog.service import coupon_points_cost
from services.points.ledger import booking, repository
from services.points.referrals.config import Reward
from services.points.referrals.models import ReferralReward
from services.points.rules.service import TenantRules, load_rules
from shared.events import publish


async def grant(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    *,
    key: str,
    purpose: str,
    contact_id: uuid.UUID,
    reward: Reward,
    at: datetime,
    referral_id: int | None = None,
    tier_count: int | None = None,
    rules: TenantRules | None = None,
) -> int | None:
    """Pay `reward` to the contact once per `key`: the reward's id, None when it was
    asked for before."""
    reward_id: int | None = await session.scalar(
        insert(ReferralReward)
        .values(
            tenant_id=tenant_id,
            reward_key=key,
            purpose=purpose,
            referral_id=referral_id,
            contact_id=contact_id,
            tier_count=tier_count,
            kind=reward.kind,
            name=reward.name,
            points=reward.points or 0,
            value_fen=reward.value_fen or 0,
            sku=reward.sku,
            status="owed",
            created_at=at,
        )
        .on_conflict_do_nothing()
        .returning(ReferralReward.id)
    )
    if reward_id is None:
        return None
    await pay(session, tenant_id, reward_id, at, rules=rules)
    return reward_id


async def pay(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    reward_id: int,
    at: datetime,
    *,
    rules: TenantRules | None = None,
) -> bool:
    """Pay an owed reward; False when it must wait (an item out of stock)."""
    row = await session.scalar(
        select(ReferralReward).where(ReferralReward.id == reward_id).with_for_update()
    )
    if row is None or row.status != "owed":
        return False
    entry_id = None
    if row.kind == "points":
        rules = rules or await load_rules(session, tenant_id)
        account = await repository.lock_account(session, tenant_id, row.contact_id)
        booked = await booking.earn(
            session,
            account,
            row.points,
            expires_at=rules.expires_at(at),
            earned_at=at,
            source_key=f"referral_reward:{row.reward_key}",
            rule="referral",
            reason=f"referral reward: {row.name}"[:200],
            details={"reward_id": row.id, "purpose": row.purpose, "referral_id": row.referral_id},
        )
        entry_id = booked.entry_id
    elif row.kind == "item":
        item = (
            await session.execute(
                text(
                    "SELECT id, active, stock FROM points_items "
                    "WHERE tenant_id = :t AND sku = :sku FOR UPDATE"
                ),
                {"t": tenant_id, "sku": row.sku},
            )
        ).first()
        if item is None or not item.active:
            return False
        if item.stock is not None:
            if item.stock <= 0:
                return False
            await session.execute(
                text("UPDATE points_items SET stock = stock - 1 WHERE id = :id"), {"id": item.id}
            )
    await session.execute(
        update(ReferralReward)
        .where(ReferralReward.id == row.id)
        .values(status="granted", entry_id=entry_id, granted_at=at)
    )
    await publish(session, "referral.reward_granted", granted_payload(row), tenant_id=tenant_id)
    return True


def granted_payload(row: ReferralReward) -> dict[str, Any]:
    return {
        "reward_id": row.id,
        "referral_id": row.referral_id,
        "contact_id": str(row.contact_id),
        "purpose": row.purpose,
        "tier_count": row.tier_count,
        "kind": row.kind,
        "name": row.name,
        "points": row.points,
        "value_fen": row.value_fen,
        "sku": row.sku,
    }


async def pay_owed(session: AsyncSession, at: datetime, limit: int = 500) -> int:
    """Grant the owed rewards that can be now (items back in stock): how many."""
    owed = (
        await session.execute(
            select(ReferralReward.id, ReferralReward.tenant_id)
            .where(ReferralReward.status == "owed")
            .order_by(ReferralReward.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    ).all()
    paid = 0
    for row in owed:
        async with session.begin_nested():
            paid += await pay(session, row.tenant_id, row.id, at)
    return paid


async def value_in_points(
    session: AsyncSession, tenant_id: uuid.UUID, row: ReferralReward, rules: TenantRules
) -> int:
    """What a reward is worth in points: a clawback takes that much."""
    if row.kind == "points":
        return row.points
    if row.kind == "coupon":
        return coupon_points_cost(row.value_fen, rules.rules.points_per_yuan_off)
    cost = await session.scalar(
        text("SELECT points_cost FROM points_items WHERE tenant_id = :t AND sku = :sku"),
        {"t": tenant_id, "sku": row.sku},
    )
    return int(cost or 0)


async def claw_back(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    reward_ids: list[int],
    *,
    reason: str,
    at: datetime,
    actor: str,
) -> list[dict[str, Any]]:
    """Take back these rewards (each once): what each took, for the revocation's event."""
    if not reward_ids:
        return []
    rows = (
        await session.scalars(
            select(ReferralReward)
            .where(ReferralReward.id.in_(reward_ids), ReferralReward.status != "clawed_back")
            .order_by(ReferralReward.contact_id, ReferralReward.id)
            .with_for_update()
        )
    ).all()
    rules = await load_rules(session, tenant_id)
    taken: list[dict[str, Any]] = []
    for row in rows:
        points = 0
        entry_id = None
        if row.status == "granted":
            points = await value_in_points(session, tenant_id, row, rules)
        if points > 0:
            account = await repository.lock_account(session, tenant_id, row.contact_id)
            booked = await booking.clawback(
                session,
                account,
                points,
                source_key=f"referral_clawback:{row.reward_key}",
                reason=f"referral revoked ({reason}): {row.name}"[:200],
                details={"reward_id": row.id, "referral_id": row.referral_id},
                created_by=actor,
            )
            entry_id = booked.entry_id
        await session.execute(
            update(ReferralReward)
            .where(ReferralReward.id == row.id)
            .values(
                status="clawed_back",
                clawback_entry_id=entry_id,
                clawback_points=points,
                clawed_back_at=at,
            )
        )
        taken.append(
            {
                "reward_id": row.id,
                "contact_id": str(row.contact_id),
                "purpose": row.purpose,
                "kind": row.kind,
                "was": row.status,
                "points": points,
            }
        )
    return taken
