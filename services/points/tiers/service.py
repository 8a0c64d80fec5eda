"""Membership tiers: immediate upgrades on growth, periodic retention reviews.

Growth is what a member earned (points, or spend in fen) over the trailing
window, net of refunds. Reaching a tier's threshold upgrades at once. At each
review (the start of a quarter or year, tenant-local), members who held their
tier through the whole period just ended keep it only if they meet its
retention minimum (e.g. diamond: 3 orders in the quarter or 5,000 points in
the year); otherwise they drop to the highest lower tier whose minimum they
meet. Every move is recorded with its reason and announced as tier.changed.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.points.ledger import booking, repository
from services.points.ledger.repository import LockedAccount
from services.points.members import in_passes, require_live_member
from services.points.rules.schemas import PointsRules, Tier
from services.points.rules.service import TenantRules, add_months, load_rules
from shared.events import publish_many

# Growth of many accounts, each at its own moment, in one statement (one row each).
_GROWTH = {
    "points_earned": text(
        """
        SELECT COALESCE((SELECT sum(points) FROM points_lots
                          WHERE account_id = u.a AND kind = 'earn'
                            AND earned_at > u.since AND earned_at <= u.until), 0)
             + COALESCE((SELECT sum(points - debt_delta) FROM points_ledger
                          WHERE account_id = u.a AND kind = 'clawback' AND order_id IS NOT NULL
                            AND created_at > u.since), 0) AS value
          FROM unnest(CAST(:a AS bigint[]), CAST(:since AS timestamptz[]),
                      CAST(:until AS timestamptz[])) WITH ORDINALITY AS u(a, since, until, n)
         ORDER BY u.n
        """
    ),
    "spend_fen": text(
        """
        SELECT COALESCE((SELECT sum((e.details->>'amount_fen')::bigint) FROM points_lots l
                           JOIN points_ledger e ON e.id = l.entry_id AND e.kind = 'earn'
                          WHERE l.account_id = u.a AND e.rule = 'order_paid'
                            AND l.earned_at > u.since AND l.earned_at <= u.until), 0)
             - COALESCE((SELECT sum(r.refund_fen) FROM points_order_refunds r
                          WHERE r.tenant_id = (SELECT tenant_id FROM points_accounts
                                                WHERE id = u.a)
                            AND r.order_id IN (SELECT order_id FROM points_lots
                                                WHERE account_id = u.a AND order_id IS NOT NULL
                                                  AND earned_at > u.since)), 0) AS value
          FROM unnest(CAST(:a AS bigint[]), CAST(:since AS timestamptz[]),
                      CAST(:until AS timestamptz[])) WITH ORDINALITY AS u(a, since, until, n)
         ORDER BY u.n
        """
    ),
}

_RETENTION_PROGRESS = text(
    """
    SELECT count(*) FILTER (WHERE rule = 'order_paid' AND earned_at >= :quarter_start
                              AND earned_at < :until) AS orders,
           COALESCE(sum(points) FILTER (WHERE earned_at >= :year_start
                                          AND earned_at < :until), 0) AS points
      FROM points_lots
     WHERE account_id = :a AND kind = 'earn' AND earned_at >= :year_start
    """
)


async def growth(session: AsyncSession, account_id: int, rules: TenantRules, now: datetime) -> int:
    return (await growths(session, [(account_id, now)], rules))[0]


async def growths(
    session: AsyncSession, accounts: list[tuple[int, datetime]], rules: TenantRules
) -> list[int]:
    """Each (account, moment)'s growth over the window ending then, in one statement."""
    if not accounts:
        return []
    window = timedelta(days=rules.rules.growth_window_days)
    values = await session.scalars(
        _GROWTH[rules.rules.growth_measure],
        {
            "a": [account_id for account_id, _ in accounts],
            "since": [at - window for _, at in accounts],
            "until": [at for _, at in accounts],
        },
    )
    return [max(0, int(value or 0)) for value in values]


def reached(rules: PointsRules, value: int) -> Tier:
    """The highest tier whose threshold `value` meets."""
    return [t for t in rules.tiers if t.threshold <= value][-1]


@dataclass(frozen=True)
class TierChange:
    """A move of one account's tier, as recorded and announced (tier.changed)."""

    account_id: int
    contact_id: uuid.UUID
    old: str | None
    new: str
    reason: str
    details: dict[str, Any]
    at: datetime


_MOVE_ACCOUNTS = text(
    """
    UPDATE points_accounts a SET tier = u.tier, tier_since = u.at, updated_at = now()
      FROM unnest(CAST(:a AS bigint[]), CAST(:tier AS text[]), CAST(:at AS timestamptz[]))
           AS u(id, tier, at)
     WHERE a.id = u.id
    """
)

_RECORD_CHANGES = text(
    """
    INSERT INTO points_tier_changes (tenant_id, account_id, from_tier, to_tier, reason, details)
    SELECT CAST(:t AS uuid), u.a, u.old, u.new, u.reason, CAST(u.details AS jsonb)
      FROM unnest(CAST(:a AS bigint[]), CAST(:old AS text[]), CAST(:new AS text[]),
                  CAST(:reason AS text[]), CAST(:details AS text[]))
           WITH ORDINALITY AS u(a, old, new, reason, details, n)
     ORDER BY u.n
    """
)


async def _change(session: AsyncSession, tenant_id: uuid.UUID, changes: list[TierChange]) -> None:
    """Move accounts (each once) to their new tiers: recorded with their reasons and
    announced as tier.changed, in three statements whatever their number."""
    if not changes:
        return
    await session.execute(
        _MOVE_ACCOUNTS,
        {
            "a": [c.account_id for c in changes],
            "tier": [c.new for c in changes],
            "at": [c.at for c in changes],
        },
    )
    await session.execute(
        _RECORD_CHANGES,
        {
            "t": tenant_id,
            "a": [c.account_id for c in changes],
            "old": [c.old for c in changes],
            "new": [c.new for c in changes],
            "reason": [c.reason for c in changes],
            "details": [json.dumps(c.details) for c in changes],
        },
    )
    await publish_many(
        session,
        (
            (
                "tier.changed",
                {
                    "contact_id": str(c.contact_id),
                    "from": c.old,
                    "to": c.new,
                    "reason": c.reason,
                    **c.details,
                },
                tenant_id,
            )
            for c in changes
        ),
    )


def _upgrade(
    account: LockedAccount, value: int, rules: TenantRules, now: datetime
) -> TierChange | None:
    """The move up that growth `value` earns the account, if any (a member without a
    tier yet joins at the tier it reached)."""
    target = reached(rules.rules, value)
    if rules.rules.rank(target.name) <= rules.rules.rank(account.tier) and account.tier:
        return None
    if account.tier == target.name:
        return None
    return TierChange(
        account.id,
        account.contact_id,
        account.tier,
        target.name,
        "upgrade" if account.tier else "joined",
        {"growth": value, "threshold": target.threshold},
        now,
    )


async def upgrade_if_reached(
    session: AsyncSession, account: LockedAccount, rules: TenantRules, now: datetime
) -> str | None:
    """Move the (locked) account up at once if its growth reaches a higher tier."""
    change = _upgrade(account, await growth(session, account.id, rules, now), rules, now)
    if change is None:
        return None
    await _change(session, account.tenant_id, [change])
    object.__setattr__(account, "tier", change.new)
    return change.new


async def upgrade_many_if_reached(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    members: list[tuple[uuid.UUID, datetime]],
    rules: TenantRules,
) -> None:
    """`upgrade_if_reached` for many (member, moment) pairs of the tenant, in their order:
    the accounts lock in contact order, then one statement each for their growth, their
    new tiers, the tier changes and the events. A member listed twice is moved in a
    second pass (its second check sees the first's move)."""
    for members_once in in_passes(members, member=lambda item: item[0]):
        accounts = await repository.lock_accounts(
            session, tenant_id, [contact for contact, _ in members_once]
        )
        locked = [(accounts[contact], at) for contact, at in members_once]
        values = await growths(session, [(account.id, at) for account, at in locked], rules)
        changes = [
            change
            for (account, at), value in zip(locked, values, strict=True)
            if (change := _upgrade(account, value, rules, at)) is not None
        ]
        await _change(session, tenant_id, changes)


def period_start(rules: TenantRules, at: datetime) -> date:
    """First day (tenant-local) of the review period `at` falls in."""
    day = rules.local_day(at)
    if rules.rules.review_every == "year":
        return date(day.year, 1, 1)
    return date(day.year, 3 * ((day.month - 1) // 3) + 1, 1)


@dataclass(frozen=True)
class Retained:
    orders_this_quarter: int
    points_this_year: int

    def meets(self, tier: Tier) -> bool:
        r = tier.retention
        if r.orders_per_quarter is None and r.points_per_year is None:
            return True
        return (
            r.orders_per_quarter is not None and self.orders_this_quarter >= r.orders_per_quarter
        ) or (r.points_per_year is not None and self.points_this_year >= r.points_per_year)


async def retention_progress(
    session: AsyncSession, account_id: int, rules: TenantRules, until: datetime
) -> Retained:
    """Orders in the quarter and points in the year before `until` (a period boundary
    for reviews, now for progress)."""
    local = until.astimezone(rules.zone)
    quarter_start = datetime.combine(
        date(local.year, 3 * ((local.month - 1) // 3) + 1, 1), time(0), rules.zone
    )
    if quarter_start >= until:
        quarter_start = add_months(quarter_start, -3)
    row = (
        await session.execute(
            _RETENTION_PROGRESS,
            {
                "a": account_id,
                "quarter_start": quarter_start,
                "year_start": add_months(until, -12),
                "until": until,
            },
        )
    ).one()
    return Retained(int(row.orders), int(row.points))


async def review(
    session: AsyncSession, tenant_id: uuid.UUID, rules: TenantRules, now: datetime
) -> int | None:
    """The retention review of the period that began last (once per period); how many
    members dropped, or None when this period was reviewed before."""
    start = period_start(rules, now)
    claimed = await session.scalar(
        text(
            "INSERT INTO points_tier_reviews (tenant_id, period_start, downgraded)"
            " VALUES (:t, :p, 0) ON CONFLICT ON CONSTRAINT uq_points_tier_review_period"
            " DO NOTHING RETURNING id"
        ),
        {"t": tenant_id, "p": start},
    )
    if claimed is None:
        return None
    boundary = datetime.combine(start, time(0), rules.zone)
    # Only members who held their tier through the whole period just ended.
    held_since = datetime.combine(
        period_start(rules, boundary - timedelta(days=1)), time(0), rules.zone
    )
    base = rules.rules.tiers[0].name
    candidates = (
        await session.execute(
            text(
                "SELECT id, contact_id, tier FROM points_accounts"
                " WHERE tenant_id = :t AND tier IS NOT NULL AND tier <> :base"
                " AND tier_since < :held_since ORDER BY id FOR UPDATE"
            ),
            {"t": tenant_id, "base": base, "held_since": held_since},
        )
    ).all()
    dropped = 0
    for account_id, contact_id, tier_name in candidates:
        progress = await retention_progress(session, account_id, rules, boundary)
        current = rules.rules.tier(tier_name)
        if progress.meets(current):
            continue
        lower = rules.rules.tiers[: rules.rules.rank(tier_name)]
        target = [t for t in lower if progress.meets(t)][-1]
        change = TierChange(
            account_id,
            contact_id,
            tier_name,
            target.name,
            "retention_review",
            {
                "period_start": start.isoformat(),
                "orders_this_quarter": progress.orders_this_quarter,
                "points_this_year": progress.points_this_year,
                "required": current.retention.model_dump(exclude_none=True),
            },
            now,
        )
        await _change(session, tenant_id, [change])
        dropped += 1
    await session.execute(
        text("UPDATE points_tier_reviews SET downgraded = :n WHERE id = :id"),
        {"n": dropped, "id": claimed},
    )
    return dropped


async def tier_view(
    session: AsyncSession, account: dict[str, Any] | None, rules: TenantRules, now: datetime
) -> dict[str, Any]:
    """Tier, the next one and what is missing for it, and the retention status."""
    tiers = rules.rules
    if account is None:
        value, name, since = 0, tiers.tiers[0].name, None
        progress = Retained(0, 0)
    else:
        value = await growth(session, account["id"], rules, now)
        name, since = account["tier"] or tiers.tiers[0].name, account["tier_since"]
        progress = await retention_progress(session, account["id"], rules, now)
    current = tiers.tier(name)
    rank = tiers.rank(name)
    following = tiers.tiers[rank + 1] if rank + 1 < len(tiers.tiers) else None
    start = period_start(rules, now)
    next_review = add_months(
        datetime.combine(start, time(0), rules.zone), 3 if tiers.review_every == "quarter" else 12
    )
    return {
        "tier": current.name,
        "since": since,
        "growth_measure": tiers.growth_measure,
        "growth": value,
        "next_tier": following.name if following else None,
        "missing": max(0, following.threshold - value) if following else 0,
        "retention": {
            "required": current.retention.model_dump(exclude_none=True),
            "orders_this_quarter": progress.orders_this_quarter,
            "points_this_year": progress.points_this_year,
            "met": progress.meets(current),
            "next_review": rules.local_day(next_review).isoformat(),
        },
    }


async def tier_status(
    session: AsyncSession, tenant_id: uuid.UUID, contact_id: uuid.UUID
) -> dict[str, Any]:
    """A member's tier_view (a contact without an account yet is at the lowest tier)."""
    rules = await load_rules(session, tenant_id)
    account = await repository.account_row(session, tenant_id, contact_id)
    if account is None:
        await require_live_member(session, tenant_id, contact_id)
    return await tier_view(session, account, rules, booking.now())
