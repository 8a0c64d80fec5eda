"""Paying the referral programme's rewards, each once, and clawing them back.

Every reward is a `referral_rewards` row with a unique `reward_key` written before
anything is paid, so a reward asked for twice (a redelivered event, a job run again,
concurrent requests) is paid once. A points reward is a ledger earning whose source
key is the reward key; a coupon or an item is recorded here (an item takes a unit of
its catalog stock) and published as `referral.reward_granted` for the shop to issue.
An item not in the catalog, inactive or out of stock stays `owed` and is granted by
the hold job when it can be (`pay_owed`).

A clawback takes the reward back through the ledger: its points, or a coupon's or an
item's value in points (a coupon's value at the tenant's points_per_yuan_off, an
item's points cost); what the balance cannot cover becomes a debt, settled from
later earnings (the ledger's debt rules).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.points.catalog.service import coupon_points_cost
from services.points.ledger import booking, repository
from services.points.referrals.config import Reward
from services.points.referrals.models import ReferralReward
from services.points.rules.service import TenantRules, load_rules
from shared.db import one_of
from shared.events import publish_many


@dataclass(frozen=True)
class Grant:
    """A reward to pay a contact once per `key`, asked for at `at` (by default the
    batch's moment)."""

    key: str
    purpose: str
    contact_id: uuid.UUID
    reward: Reward
    referral_id: int | None = None
    tier_count: int | None = None
    at: datetime | None = None


_GRANT_MANY = text(
    """
    INSERT INTO referral_rewards
           (tenant_id, reward_key, purpose, referral_id, contact_id, tier_count, kind, name,
            points, value_fen, sku, status, created_at)
    SELECT CAST(:tenant AS uuid), k, p, r, c, n, kind, name, pts, fen, sku, 'owed', at
      FROM unnest(CAST(:keys AS text[]), CAST(:purposes AS text[]), CAST(:referrals AS bigint[]),
                  CAST(:contacts AS uuid[]), CAST(:tiers AS int[]), CAST(:kinds AS text[]),
                  CAST(:names AS text[]), CAST(:points AS bigint[]), CAST(:fens AS bigint[]),
                  CAST(:skus AS text[]), CAST(:ats AS timestamptz[]))
           AS u(k, p, r, c, n, kind, name, pts, fen, sku, at)
     ORDER BY k
    ON CONFLICT DO NOTHING
    RETURNING id
    """
)


async def grant_many(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    grants: list[Grant],
    at: datetime,
    *,
    rules: TenantRules | None = None,
) -> list[int]:
    """Pay each reward once per key, set-based, each granted at the time it was asked
    for: the ids of the rewards new here (paid, or owed when they must wait); those
    asked for before are left as they are."""
    if not grants:
        return []
    found = await session.execute(
        _GRANT_MANY,
        {
            "tenant": tenant_id,
            "ats": [g.at or at for g in grants],
            "keys": [g.key for g in grants],
            "purposes": [g.purpose for g in grants],
            "referrals": [g.referral_id for g in grants],
            "contacts": [g.contact_id for g in grants],
            "tiers": [g.tier_count for g in grants],
            "kinds": [g.reward.kind for g in grants],
            "names": [g.reward.name for g in grants],
            "points": [g.reward.points or 0 for g in grants],
            "fens": [g.reward.value_fen or 0 for g in grants],
            "skus": [g.reward.sku for g in grants],
        },
    )
    ids = sorted(row.id for row in found)
    await pay_many(session, tenant_id, ids, at, rules=rules, when_asked=True)
    return ids


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
    ids = await grant_many(
        session,
        tenant_id,
        [Grant(key, purpose, contact_id, reward, referral_id, tier_count, at)],
        at,
        rules=rules,
    )
    return ids[0] if ids else None


_GRANTED = text(
    """
    UPDATE referral_rewards w
       SET status = 'granted', entry_id = u.e,
           granted_at = CASE WHEN CAST(:when_asked AS boolean) THEN w.created_at ELSE :at END
      FROM unnest(CAST(:ids AS bigint[]), CAST(:entries AS bigint[])) AS u(id, e)
     WHERE w.id = u.id
    RETURNING w.*
    """
)


async def pay_many(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    reward_ids: list[int],
    at: datetime,
    *,
    rules: TenantRules | None = None,
    when_asked: bool = False,
) -> list[int]:
    """Pay the tenant's owed rewards among these, set-based, at `at` (with
    `when_asked`, each at the time it was asked for): the ids paid. A coupon is
    granted; an item takes a unit of its stock, each sku's row locked and moved once
    (those beyond its stock, or of an item not in the catalog or inactive, stay owed);
    points are booked through the ledger."""
    if not reward_ids:
        return []
    rows = (
        await session.scalars(
            select(ReferralReward)
            .where(
                ReferralReward.tenant_id == tenant_id,
                one_of(ReferralReward.id, reward_ids),
                ReferralReward.status == "owed",
            )
            .order_by(ReferralReward.id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    ).all()
    entries: dict[int, int | None] = {r.id: None for r in rows if r.kind == "coupon"}
    items: dict[str, list[ReferralReward]] = {}
    for row in rows:
        if row.kind == "item" and row.sku is not None:
            items.setdefault(row.sku, []).append(row)
    for sku in sorted(items):
        wanting = items[sku]
        item = (
            await session.execute(
                text(
                    "SELECT id, active, stock FROM points_items "
                    "WHERE tenant_id = :t AND sku = :sku FOR UPDATE"
                ),
                {"t": tenant_id, "sku": sku},
            )
        ).first()
        if item is None or not item.active:
            continue
        taken = wanting if item.stock is None else wanting[: max(0, item.stock)]
        if item.stock is not None and taken:
            await session.execute(
                text("UPDATE points_items SET stock = stock - :n WHERE id = :id"),
                {"id": item.id, "n": len(taken)},
            )
        entries.update({r.id: None for r in taken})
    points_rows = [r for r in rows if r.kind == "points"]
    if points_rows:
        rules = rules or await load_rules(session, tenant_id)
        for row in sorted(points_rows, key=lambda r: (r.contact_id, r.id)):
            booked_at = row.created_at if when_asked else at
            entries[row.id] = await _book_points(session, tenant_id, row, rules, booked_at)
    if not entries:
        return []
    ids = sorted(entries)
    granted = (
        await session.execute(
            _GRANTED,
            {"ids": ids, "entries": [entries[i] for i in ids], "at": at, "when_asked": when_asked},
        )
    ).all()
    await publish_many(
        session,
        [("referral.reward_granted", granted_payload(row), tenant_id) for row in granted],
    )
    return ids


async def _book_points(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    row: ReferralReward,
    rules: TenantRules,
    at: datetime,
) -> int:
    """A points reward's earning in the ledger: its entry."""
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
    return booked.entry_id


def granted_payload(row: Any) -> dict[str, Any]:
    """`referral.reward_granted`'s payload of a reward row."""
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
    by_tenant: dict[uuid.UUID, list[int]] = {}
    for row in owed:
        by_tenant.setdefault(row.tenant_id, []).append(row.id)
    paid = 0
    for tenant_id in sorted(by_tenant):
        paid += len(await pay_many(session, tenant_id, by_tenant[tenant_id], at))
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
            .where(one_of(ReferralReward.id, reward_ids), ReferralReward.status != "clawed_back")
            .order_by(ReferralReward.contact_id, ReferralReward.id)
            .with_for_update()
            .execution_options(populate_existing=True)
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
