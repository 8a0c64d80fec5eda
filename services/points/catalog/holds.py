"""Points + cash holds: the points of a points + cash redemption are held while the
shop order is open, then `spent` when it is paid (`order.paid`), or `released`
when it runs out or is cancelled: a `reversal` entry gives the points back to
the lots they came from (those not expired meanwhile), and the unit goes back to
the item's stock. Locks: the member's account first, then the redemption.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from services.points.catalog import repository as catalog_sql
from services.points.catalog.service import RELEASE_BATCH, RedemptionNotFound, redemption_view
from services.points.ledger import booking, repository
from services.points.ledger.repository import LockedAccount
from shared.errors import Conflict

log = logging.getLogger("scrm.points.holds")


async def spend_hold(session: AsyncSession, tenant_id: uuid.UUID, order_id: str) -> bool:
    """The order was paid: its held points are spent. False when it had no hold."""
    return await spend_holds(session, tenant_id, [order_id]) > 0


async def spend_holds(session: AsyncSession, tenant_id: uuid.UUID, order_ids: list[str]) -> int:
    """These orders were paid: the points held for them are spent. How many holds were.
    One statement finds the few orders with a hold; their accounts lock in id order."""
    spent = 0
    for row in await catalog_sql.redemptions_for_orders(session, tenant_id, order_ids):
        # The account lock first: a release of the same hold waits, then sees it spent.
        await repository.lock_account(session, tenant_id, row["contact_id"])
        if await catalog_sql.set_status(session, row["id"], from_status="held", to_status="spent"):
            spent += 1
            continue
        log.warning(
            "order paid but its points hold is no longer held",
            extra={
                "tenant_id": str(tenant_id),
                "order_id": row["order_id"],
                "redemption_id": row["id"],
            },
        )
    return spent


async def cancel_hold(
    session: AsyncSession, tenant_id: uuid.UUID, redemption_id: int, actor: str
) -> dict[str, Any]:
    """Release a held redemption now: points back, the unit back to stock.
    409 `not_held` if it was already spent or released (or never held)."""
    row = await catalog_sql.redemption(session, tenant_id, redemption_id)
    if row is None:
        raise RedemptionNotFound(f"no redemption {redemption_id}")
    account = await repository.lock_account(session, tenant_id, row["contact_id"])
    item_id = await _release(
        session, account, redemption_id, now=booking.now(), reason="hold cancelled", actor=actor
    )
    if item_id is None:
        raise Conflict(
            f"redemption {redemption_id} is not held",
            code="not_held",
            details={"status": row["status"]},
        )
    await catalog_sql.give_back_item_stock(session, {item_id: 1})
    return await redemption_view(session, tenant_id, redemption_id)


async def release_expired_holds(session: AsyncSession, now: datetime | None = None) -> int:
    """Release every hold whose time ran out by `now`, in batches of accounts (locked in
    id order); the units go back to stock at the end, items in id order. How many."""
    at = now or booking.now()
    released: dict[uuid.UUID, int] = {}
    while True:
        due = await catalog_sql.due_holds(session, at, RELEASE_BATCH)
        before = sum(released.values())
        for hold in due:
            # Holds come by account id, so accounts are locked in that order; locking
            # again for the next hold of the same account refreshes its snapshot.
            account = await repository.lock_account(session, hold["tenant_id"], hold["contact_id"])
            item_id = await _release(
                session, account, hold["id"], now=at, reason="hold expired", actor=None
            )
            if item_id is not None:
                released[item_id] = released.get(item_id, 0) + 1
        # A full batch of which none could be released would only come back again.
        if len(due) < RELEASE_BATCH or sum(released.values()) == before:
            break
    await catalog_sql.give_back_item_stock(session, released)
    return sum(released.values())


async def _release(
    session: AsyncSession,
    account: LockedAccount,
    redemption_id: int,
    *,
    now: datetime,
    reason: str,
    actor: str | None,
) -> uuid.UUID | None:
    """Give a hold's points back to the lots they came from (a `reversal` entry) and mark
    it released; its item id, or None when it was not held. The account is locked.

    Points taken from lots that have expired since are not given back: they would
    have expired had they not been held (and their lot's expiry is booked already).
    """
    held = await catalog_sql.lock_redemption(session, redemption_id)
    if held is None or held["status"] != "held" or held["account_id"] != account.id:
        return None
    restorable, expired = await catalog_sql.restorable_consumption(session, held["entry_id"], now)
    points = sum(n for _, n in restorable)
    reversal_id = None
    if points:
        reversal_id = await _reverse(
            session,
            account,
            points,
            restorable,
            reason=f"{reason}: redemption {redemption_id}",
            source_key=f"release:redemption:{redemption_id}",
            details={"redemption_id": redemption_id, "expired_while_held": expired},
            actor=actor,
        )
    released = await catalog_sql.set_status(
        session,
        redemption_id,
        from_status="held",
        to_status="released",
        reversal_entry_id=reversal_id,
    )
    assert released, "a locked held redemption could not be released"
    return uuid.UUID(str(held["item_id"]))


async def _reverse(
    session: AsyncSession,
    account: LockedAccount,
    points: int,
    lots: list[tuple[int, int]],
    *,
    reason: str,
    source_key: str,
    details: dict[str, Any],
    actor: str | None,
) -> int:
    """Book a reversal of `points` back into `lots`; a debt left by clawbacks is settled
    from it first, as an earning would. The reversal's entry id."""
    balance = account.balance + points
    written = await repository.insert_entry(
        session,
        booking.entry_values(
            account,
            "reversal",
            points,
            balance,
            reason=reason,
            source_key=source_key,
            details=details,
            created_by=actor,
        ),
    )
    assert written is not None, f"{source_key} was booked before"
    reversal_id = written[0]
    await repository.restore_lots(session, account, reversal_id, lots)
    balance, debt, _ = await booking.settle_debt(
        session, account, balance, points, credited_by=reversal_id, created_by=actor
    )
    await repository.update_account(session, account.id, balance=balance, debt=debt, spent=-points)
    return reversal_id
