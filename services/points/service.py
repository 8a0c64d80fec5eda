"""Business rules of the points service. Functions take a session and plain values."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from services.points import SERVICE, ledger, repository, tiers
from services.points.exceptions import InsufficientPoints, UnknownContact
from services.points.ledger import Booked
from services.points.repository import LockedAccount
from services.points.rules import TenantRules, apply_multiplier, load_rules
from services.points.schemas import PointsStatus
from services.users import contact_status
from shared.runtime import Runtime
from shared.service_status import service_status


async def status(session: AsyncSession, runtime: Runtime, tenant_id: uuid.UUID) -> PointsStatus:
    found = await service_status(session, runtime, SERVICE, tenant_id)
    return PointsStatus.model_validate(found.model_dump())


async def _member(session: AsyncSession, tenant_id: uuid.UUID, contact_id: uuid.UUID) -> None:
    """Points move only for a live contact of the tenant (merged: use the survivor)."""
    found = await contact_status(session, tenant_id, contact_id)
    if found != "active":
        raise UnknownContact(found)


# -- operator and member requests -----------------------------------------------------


async def adjust(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    contact_id: uuid.UUID,
    points: int,
    reason: str,
    actor: str,
) -> Booked:
    """An operator's correction: a credit (a new lot) or a debit (never below zero)."""
    await _member(session, tenant_id, contact_id)
    account = await repository.lock_account(session, tenant_id, contact_id)
    source_key = f"adjustment:{uuid.uuid4()}"
    if points > 0:
        rules = await load_rules(session, tenant_id)
        booked = await ledger.earn(
            session,
            account,
            points,
            kind="adjustment",
            expires_at=rules.expires_at(ledger.now()),
            source_key=source_key,
            reason=reason,
            created_by=actor,
        )
    else:
        booked = await ledger.spend(
            session,
            account,
            -points,
            kind="adjustment",
            source_key=source_key,
            reason=reason,
            created_by=actor,
        )
    await ledger.announce(session, booked, tenant_id)
    return booked


async def redeem_points(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    contact_id: uuid.UUID,
    points: int,
    reason: str,
    actor: str,
    details: dict[str, Any] | None = None,
) -> Booked:
    """Spend `points` (oldest lots first) or raise InsufficientPoints, changing nothing."""
    await _member(session, tenant_id, contact_id)
    account = await repository.lock_account(session, tenant_id, contact_id)
    booked = await ledger.spend(
        session,
        account,
        points,
        source_key=f"redemption:{uuid.uuid4()}",
        reason=reason,
        details=details,
        created_by=actor,
    )
    await ledger.announce(session, booked, tenant_id)
    return booked


async def account_view(
    session: AsyncSession, tenant_id: uuid.UUID, contact_id: uuid.UUID
) -> dict[str, Any]:
    """Balance, debt, lifetime sums and what expires soon (by local expiry date)."""
    rules = await load_rules(session, tenant_id)
    row = await repository.account_row(session, tenant_id, contact_id)
    if row is None:
        await _member(session, tenant_id, contact_id)
        return {
            "contact_id": contact_id,
            "balance": 0,
            "debt": 0,
            "lifetime_earned": 0,
            "lifetime_spent": 0,
            "expiring_soon": [],
            "expiring_soon_total": 0,
        }
    horizon = ledger.now() + rules.warning_window()
    lots = await repository.lots_expiring_by(session, row["id"], horizon)
    by_day: dict[str, int] = {}
    for expires_at, remaining in lots:
        day = rules.local_day(expires_at).isoformat()
        by_day[day] = by_day.get(day, 0) + remaining
    return {
        "contact_id": contact_id,
        "balance": row["balance"],
        "debt": row["debt"],
        "lifetime_earned": row["lifetime_earned"],
        "lifetime_spent": row["lifetime_spent"],
        "expiring_soon": [{"expires_on": d, "points": p} for d, p in by_day.items()],
        "expiring_soon_total": sum(by_day.values()),
    }


async def ledger_page(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    contact_id: uuid.UUID,
    *,
    before: int | None,
    limit: int,
) -> tuple[list[dict[str, Any]], int | None]:
    """Entries newest first; the cursor is the last id shown."""
    rows = await repository.ledger_entries(session, tenant_id, contact_id, before, limit + 1)
    items = rows[:limit]
    return items, (items[-1]["id"] if len(rows) > limit else None)


# -- earning from events ----------------------------------------------------------------


async def earn_by_rule(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    contact_id: uuid.UUID,
    *,
    rule: str,
    base_points: int,
    occurred_at: datetime,
    source_key: str,
    rules: TenantRules,
    reason: str,
    order_id: str | None = None,
    details: dict[str, Any] | None = None,
    daily_cap: int | None = None,
) -> Booked | None:
    """Credit what a rule gives for an event (None when it gives nothing now)."""
    account = await repository.lock_account(session, tenant_id, contact_id)
    multiplier = rules.rules.multiplier(rule, occurred_at, account.tier)
    points = apply_multiplier(base_points, multiplier)
    if points <= 0:
        return None
    day = rules.local_day(occurred_at).isoformat()
    if daily_cap is not None:
        # Counted under the account's lock: concurrent events cannot both pass the cap.
        booked_that_day, _ = await repository.count_on_day(session, account.id, rule, day)
        if booked_that_day >= daily_cap:
            return None
    entry_details = {
        **(details or {}),
        "day": day,
        "multiplier": str(multiplier),
        "base_points": base_points,
    }
    if account.debt == 0 and rules.rules.growth_measure == "points_earned":
        # The common case, in one round trip; the tier check needs no query unless
        # this earning reaches the next threshold (or the member has no tier yet).
        booked, growth_before = await ledger.earn_at_once(
            session,
            account,
            points,
            expires_at=rules.expires_at(occurred_at),
            earned_at=occurred_at,
            source_key=source_key,
            growth_since=occurred_at - timedelta(days=rules.rules.growth_window_days),
            rule=rule,
            reason=reason,
            order_id=order_id,
            details=entry_details,
        )
        if booked.replayed:
            return booked
        reached = tiers.reached(rules.rules, growth_before + points)
        if account.tier is None or rules.rules.rank(reached.name) > rules.rules.rank(account.tier):
            await tiers.upgrade_if_reached(session, account, rules, occurred_at)
        return booked
    booked = await ledger.earn(
        session,
        account,
        points,
        expires_at=rules.expires_at(occurred_at),
        earned_at=occurred_at,
        source_key=source_key,
        rule=rule,
        reason=reason,
        order_id=order_id,
        details=entry_details,
    )
    await ledger.announce(session, booked, tenant_id)
    if not booked.replayed:
        await tiers.upgrade_if_reached(session, account, rules, occurred_at)
    return booked


async def record_refund(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    contact_id: uuid.UUID,
    *,
    order_id: str,
    refund_fen: int,
    source_key: str,
) -> Booked | None:
    """Note a refund of an order and take back its points in proportion."""
    account = await repository.lock_account(session, tenant_id, contact_id)
    if not await repository.record_refund(session, tenant_id, order_id, source_key, refund_fen):
        return None  # this refund was seen before
    return await reconcile_order(session, account, order_id, source_key=f"clawback:{source_key}")


async def reconcile_order(
    session: AsyncSession, account: LockedAccount, order_id: str, *, source_key: str
) -> Booked | None:
    """Claw back what an order's refunds make due and was not yet taken. Cumulative:
    partial refunds never take more than the order earned, and a refund seen before
    its payment is applied once the payment earns."""
    earned, amount = await repository.order_earning(session, account.tenant_id, order_id)
    if not earned or not amount:
        return None
    refunded = min(amount, await repository.order_refunded(session, account.tenant_id, order_id))
    due = earned * refunded // amount
    already = earned - await repository.order_points(session, account.tenant_id, order_id)
    take = due - already
    if take <= 0:
        return None
    booked = await ledger.clawback(
        session,
        account,
        take,
        source_key=source_key,
        reason=f"refund of order {order_id}",
        order_id=order_id,
        details={"refunded_fen": refunded, "order_fen": amount},
    )
    await ledger.announce(session, booked, account.tenant_id)
    return booked


def insufficient(exc: InsufficientPoints) -> dict[str, Any]:
    return {"error": {"code": exc.code, "message": exc.message, "details": exc.details}}


async def balance_of(session: AsyncSession, account_id: int) -> int:
    return await repository.balance_of(session, account_id)


async def tier_view(
    session: AsyncSession, tenant_id: uuid.UUID, contact_id: uuid.UUID
) -> dict[str, Any]:
    rules = await load_rules(session, tenant_id)
    account = await repository.account_row(session, tenant_id, contact_id)
    if account is None:
        await _member(session, tenant_id, contact_id)
    return await tiers.tier_view(session, account, rules, ledger.now())
