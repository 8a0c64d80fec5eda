"""Business rules of the points ledger: requests on accounts, earning from events (in
earning.py), and refunds' clawbacks. Functions take a session and plain values
(earn_by_rule also takes the engine, to book an earning as a transaction of its own)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from services.points import SERVICE
from services.points.exceptions import InsufficientPoints
from services.points.ledger import booking, repository
from services.points.ledger.booking import Booked
from services.points.ledger.earning import earn_by_rule as earn_by_rule  # part of this API
from services.points.ledger.repository import LockedAccount
from services.points.ledger.schemas import PointsStatus
from services.points.members import require_live_member
from services.points.rules.service import load_rules
from shared.runtime import Runtime
from shared.service_status import service_status


async def status(session: AsyncSession, runtime: Runtime, tenant_id: uuid.UUID) -> PointsStatus:
    found = await service_status(session, runtime, SERVICE, tenant_id)
    return PointsStatus.model_validate(found.model_dump())


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
    await require_live_member(session, tenant_id, contact_id)
    account = await repository.lock_account(session, tenant_id, contact_id)
    source_key = f"adjustment:{uuid.uuid4()}"
    if points > 0:
        rules = await load_rules(session, tenant_id)
        booked = await booking.earn(
            session,
            account,
            points,
            kind="adjustment",
            expires_at=rules.expires_at(booking.now()),
            source_key=source_key,
            reason=reason,
            created_by=actor,
        )
    else:
        booked = await booking.spend(
            session,
            account,
            -points,
            kind="adjustment",
            source_key=source_key,
            reason=reason,
            created_by=actor,
        )
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
    await require_live_member(session, tenant_id, contact_id)
    account = await repository.lock_account(session, tenant_id, contact_id)
    booked = await booking.spend(
        session,
        account,
        points,
        source_key=f"redemption:{uuid.uuid4()}",
        reason=reason,
        details=details,
        created_by=actor,
    )
    return booked


async def account_view(
    session: AsyncSession, tenant_id: uuid.UUID, contact_id: uuid.UUID
) -> dict[str, Any]:
    """Balance, debt, lifetime sums and what expires soon (by local expiry date)."""
    rules = await load_rules(session, tenant_id)
    row = await repository.account_row(session, tenant_id, contact_id)
    if row is None:
        await require_live_member(session, tenant_id, contact_id)
        return {
            "contact_id": contact_id,
            "balance": 0,
            "debt": 0,
            "lifetime_earned": 0,
            "lifetime_spent": 0,
            "expiring_soon": [],
            "expiring_soon_total": 0,
        }
    horizon = booking.now() + rules.warning_window()
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


# -- refunds ------------------------------------------------------------------------------


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


async def apply_refunds_before_payment(
    session: AsyncSession, tenant_id: uuid.UUID, paid: dict[str, uuid.UUID]
) -> None:
    """Orders that just earned (order id: its member): a refund of one that arrived
    before its payment is clawed back now. Most orders have none: one statement."""
    for order_id in await repository.orders_with_refunds(session, tenant_id, list(paid)):
        account = await repository.lock_account(session, tenant_id, paid[order_id])
        await reconcile_order(session, account, order_id, source_key=f"clawback:paid:{order_id}")


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
    booked = await booking.clawback(
        session,
        account,
        take,
        source_key=source_key,
        reason=f"refund of order {order_id}",
        order_id=order_id,
        details={"refunded_fen": refunded, "order_fen": amount},
    )
    return booked


def insufficient(exc: InsufficientPoints) -> dict[str, Any]:
    return {"error": {"code": exc.code, "message": exc.message, "details": exc.details}}


async def balance_of(session: AsyncSession, account_id: int) -> int:
    return await repository.balance_of(session, account_id)
