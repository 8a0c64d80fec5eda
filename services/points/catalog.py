"""The redemption catalog: what members spend points on, and the rules of each kind.

- coupon: a value off (fen); by default it costs that value at the tenant's
  `points_per_yuan_off` (50 points take ¥1 off). Redeemed at once: `completed`.
- lottery: a draw (100 points by default) from a prize table with weights and
  stock. The outcome is a pure function of a random seed and the table of prizes
  still in play, both stored on the redemption, so anyone can recompute it.
- points_cash: points plus cash. The points are `held` when the shop order
  starts; the order's payment (`order.paid`) makes them `spent`, and a hold that
  runs out (or is cancelled) is `released`: its points go back to the lots they
  came from (a `reversal` entry) and the unit back to the item's stock.

One transaction per redemption, one lock order everywhere: the member's account,
then the item row, then its prize rows. Stock and per-member limits are checked
under those locks, so they hold however many requests arrive at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from services.points import catalog_repository as catalog_sql
from services.points import ledger, repository
from services.points.catalog_schemas import ItemIn
from services.points.exceptions import UnknownContact
from services.points.ledger import Booked
from services.points.repository import LockedAccount
from services.points.rules import load_rules
from services.points.schemas import MAX_POINTS
from services.users import contact_status
from shared.errors import Conflict, InvalidInput, NotFound

log = logging.getLogger("scrm.points.catalog")

DEFAULT_DRAW_COST = 100
DRAW_ALGORITHM = "sha256-mod-v1"
RELEASE_BATCH = 500


class ItemNotFound(NotFound):
    code = "item_not_found"


class RedemptionNotFound(NotFound):
    code = "redemption_not_found"


class OutOfStock(Conflict):
    code = "out_of_stock"


class LimitReached(Conflict):
    code = "limit_reached"


class ItemInactive(Conflict):
    code = "item_inactive"


# -- items ----------------------------------------------------------------------------


def coupon_points_cost(value_fen: int, points_per_yuan_off: int) -> int:
    """What a coupon costs at the exchange rate, rounded up (never a free coupon)."""
    return -(-value_fen * points_per_yuan_off // 100)


async def create_item(session: AsyncSession, tenant_id: uuid.UUID, spec: ItemIn) -> dict[str, Any]:
    """Add an item (and a lottery's prize table); 409 `sku_taken` if the sku is in use."""
    points_cost = spec.points_cost
    if points_cost is None:
        if spec.kind == "coupon":
            assert spec.coupon_value_fen is not None
            rules = await load_rules(session, tenant_id)
            points_cost = coupon_points_cost(spec.coupon_value_fen, rules.rules.points_per_yuan_off)
        else:
            points_cost = DEFAULT_DRAW_COST
    if points_cost > MAX_POINTS:
        raise InvalidInput(
            f"this coupon would cost {points_cost} points, more than {MAX_POINTS}",
            details={"field": "coupon_value_fen"},
        )
    values = spec.model_dump(exclude={"prizes"}) | {"points_cost": points_cost}
    item_id = await catalog_sql.insert_item(session, tenant_id, values)
    if item_id is None:
        raise Conflict(f"sku {spec.sku!r} is already in use", code="sku_taken")
    if spec.prizes:
        await catalog_sql.insert_prizes(
            session, tenant_id, item_id, [p.model_dump() for p in spec.prizes]
        )
    return await item_view(session, tenant_id, item_id)


async def item_view(
    session: AsyncSession, tenant_id: uuid.UUID, item_id: uuid.UUID
) -> dict[str, Any]:
    item = await catalog_sql.item(session, tenant_id, item_id)
    if item is None:
        raise ItemNotFound(f"no catalog item {item_id}")
    return item | {"prizes": await catalog_sql.prizes_of(session, [item_id])}


async def list_items(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    *,
    kind: str | None,
    active: bool | None,
    cursor: str | None,
    limit: int,
) -> tuple[list[dict[str, Any]], str | None]:
    """Items in sku order with their prizes; the cursor is the last sku shown."""
    rows = await catalog_sql.list_items(
        session, tenant_id, kind=kind, active=active, after_sku=cursor, limit=limit + 1
    )
    page = rows[:limit]
    prizes = await catalog_sql.prizes_of(session, [r["id"] for r in page if r["kind"] == "lottery"])
    items = [r | {"prizes": [p for p in prizes if p["item_id"] == r["id"]]} for r in page]
    return items, (page[-1]["sku"] if len(rows) > limit else None)


async def update_item(
    session: AsyncSession, tenant_id: uuid.UUID, item_id: uuid.UUID, changes: dict[str, Any]
) -> dict[str, Any]:
    """Activate or deactivate an item, set its stock, limits, price or hold time."""
    if await catalog_sql.item(session, tenant_id, item_id, lock=True) is None:
        raise ItemNotFound(f"no catalog item {item_id}")
    await catalog_sql.update_item(session, tenant_id, item_id, changes)
    return await item_view(session, tenant_id, item_id)


# -- lottery draws ----------------------------------------------------------------------


@dataclass(frozen=True)
class Draw:
    prize: dict[str, Any]
    ticket: int
    total_weight: int


def draw(seed: str, table: list[dict[str, Any]]) -> Draw:
    """The prize a seed draws from a table of prizes in play (in table order).

    ticket = SHA-256(seed) as a big-endian integer, modulo the total weight; the
    prize is the line whose cumulative weight range holds the ticket. Nothing
    else goes in, so a stored (seed, table) always gives the same prize.
    """
    total = sum(int(line["weight"]) for line in table)
    if total <= 0:
        raise ValueError("no prize is in play")
    ticket = int.from_bytes(hashlib.sha256(seed.encode()).digest(), "big") % total
    remaining = ticket
    for line in table:
        if remaining < int(line["weight"]):
            return Draw(line, ticket, total)
        remaining -= int(line["weight"])
    raise AssertionError("unreachable: the ticket is below the total weight")


def _in_play(prizes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {k: p[k] for k in ("id", "name", "weight", "stock", "blank")}
        for p in prizes
        if p["blank"] or p["stock"] is None or p["stock"] > 0
    ]


async def _draw_prize(
    session: AsyncSession, item: dict[str, Any], seed: str
) -> tuple[int, dict[str, Any]]:
    """Draw under the prize rows' locks and take the prize's unit: (prize id, outcome)."""
    table = _in_play(await catalog_sql.prizes_of(session, [item["id"]], lock=True))
    if not table:
        raise OutOfStock("every prize of this draw is gone", details={"item_id": str(item["id"])})
    drawn = draw(seed, table)
    prize = drawn.prize
    if not prize["blank"] and not await catalog_sql.take_prize_stock(session, prize["id"]):
        raise AssertionError("a locked prize in play has no stock")
    return prize["id"], {
        "algorithm": DRAW_ALGORITHM,
        "table": table,
        "total_weight": drawn.total_weight,
        "ticket": drawn.ticket,
        "prize": {"id": prize["id"], "name": prize["name"], "blank": prize["blank"]},
    }


async def check_draw(
    session: AsyncSession, tenant_id: uuid.UUID, redemption_id: int
) -> dict[str, Any]:
    """Recompute a lottery redemption's prize from its stored seed and table."""
    row = await catalog_sql.redemption(session, tenant_id, redemption_id)
    if row is None:
        raise RedemptionNotFound(f"no redemption {redemption_id}")
    if row["kind"] != "lottery" or row["seed"] is None:
        raise Conflict("this redemption is not a lottery draw", code="not_a_draw")
    outcome = row["outcome"]
    again = draw(row["seed"], outcome["table"])
    return {
        "redemption_id": redemption_id,
        "seed": row["seed"],
        "algorithm": outcome["algorithm"],
        "ticket": again.ticket,
        "total_weight": again.total_weight,
        "recorded_prize_id": row["prize_id"],
        "recomputed_prize_id": again.prize["id"],
        "matches": again.prize["id"] == row["prize_id"] and again.ticket == outcome["ticket"],
    }


# -- redeeming ------------------------------------------------------------------------


async def _member(session: AsyncSession, tenant_id: uuid.UUID, contact_id: uuid.UUID) -> None:
    found = await contact_status(session, tenant_id, contact_id)
    if found != "active":
        raise UnknownContact(found)


async def _find_item(session: AsyncSession, tenant_id: uuid.UUID, ref: str) -> dict[str, Any]:
    """An item by id, or by sku."""
    try:
        item_id: uuid.UUID | None = uuid.UUID(ref)
    except ValueError:
        item_id = await catalog_sql.item_id_by_sku(session, tenant_id, ref)
    item = await catalog_sql.item(session, tenant_id, item_id) if item_id else None
    if item is None:
        raise ItemNotFound(f"no catalog item {ref!r}")
    return item


async def redeem_item(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    contact_id: uuid.UUID,
    item_ref: str,
    *,
    order_id: str | None,
    reason: str,
    actor: str,
) -> dict[str, Any]:
    """Redeem one unit of an item (by id or sku) for a member: the redemption, as
    RedemptionOut. Refusals change nothing: 409 `out_of_stock`, `limit_reached`,
    `item_inactive`, `order_already_held`, or InsufficientPoints."""
    await _member(session, tenant_id, contact_id)
    found = await _find_item(session, tenant_id, item_ref)
    if (found["kind"] == "points_cash") != (order_id is not None):
        raise InvalidInput(
            "order_id is required for a points_cash item, and only for one",
            details={"field": "order_id", "kind": found["kind"]},
        )
    account = await repository.lock_account(session, tenant_id, contact_id)
    item = await catalog_sql.item(session, tenant_id, found["id"], lock=True)
    assert item is not None  # items are never deleted
    if not item["active"]:
        raise ItemInactive("this item is not available", details={"item_id": str(item["id"])})
    # A savepoint: a refusal after the first write (no points, no prize left)
    # undoes the stock taken, yet the request's transaction can still answer.
    async with session.begin_nested():
        redemption_id = await _redeem_locked(
            session, account, item, order_id=order_id, reason=reason, actor=actor
        )
    return await redemption_view(session, tenant_id, redemption_id)


async def _redeem_locked(
    session: AsyncSession,
    account: LockedAccount,
    item: dict[str, Any],
    *,
    order_id: str | None,
    reason: str,
    actor: str,
) -> int:
    item_id = item["id"]
    if item["stock"] is not None and not await catalog_sql.take_item_stock(session, item_id):
        raise OutOfStock("this item is out of stock", details={"item_id": str(item_id)})
    limit = item["per_member_limit"]
    if limit is not None:
        taken = await catalog_sql.active_redemptions(session, item_id, account.id)
        if taken >= limit:
            raise LimitReached(
                f"this member has redeemed this item {taken} times, the limit is {limit}",
                details={"item_id": str(item_id), "limit": limit, "redeemed": taken},
            )
    booked = await ledger.spend(
        session,
        account,
        item["points_cost"],
        source_key=f"redemption:{uuid.uuid4()}",
        reason=reason,
        details={"item_id": str(item_id), "sku": item["sku"], "item_kind": item["kind"]},
        created_by=actor,
    )
    values: dict[str, Any] = {
        "tenant": account.tenant_id,
        "item": item_id,
        "account": account.id,
        "contact": account.contact_id,
        "status": "completed",
        "points": item["points_cost"],
        "cash_fen": item["cash_fen"],
        "entry": booked.entry_id,
        "order_id": order_id,
        "expires_at": None,
        "seed": None,
        "prize_id": None,
        "outcome": {},
    }
    if item["kind"] == "lottery":
        seed = secrets.token_hex(16)
        prize_id, outcome = await _draw_prize(session, item, seed)
        values |= {"seed": seed, "prize_id": prize_id, "outcome": outcome}
    elif item["kind"] == "points_cash":
        expires_at = ledger.now() + timedelta(minutes=item["hold_minutes"])
        values |= {"status": "held", "expires_at": expires_at}
    redemption_id = await catalog_sql.insert_redemption(session, values)
    if redemption_id is None:
        raise Conflict(
            f"order {order_id!r} already has a redemption",
            code="order_already_held",
            details={"order_id": order_id},
        )
    await ledger.announce(session, booked, account.tenant_id)
    return redemption_id


async def redemption_view(
    session: AsyncSession, tenant_id: uuid.UUID, redemption_id: int
) -> dict[str, Any]:
    """A redemption as RedemptionOut (with the member's current balance)."""
    row = await catalog_sql.redemption(session, tenant_id, redemption_id)
    if row is None:
        raise RedemptionNotFound(f"no redemption {redemption_id}")
    prize = (
        {"id": row["prize_id"], "name": row["prize_name"], "blank": row["prize_blank"]}
        if row["prize_id"] is not None
        else None
    )
    return row | {"prize": prize}


# -- points + cash holds ------------------------------------------------------------------


async def spend_hold(session: AsyncSession, tenant_id: uuid.UUID, order_id: str) -> bool:
    """The order was paid: its held points are spent. False when it had no hold."""
    row = await catalog_sql.redemption_for_order(session, tenant_id, order_id)
    if row is None:
        return False
    # The account lock first: a release of the same hold waits, then sees it spent.
    await repository.lock_account(session, tenant_id, row["contact_id"])
    spent = await catalog_sql.set_status(session, row["id"], from_status="held", to_status="spent")
    if not spent:
        log.warning(
            "order paid but its points hold is no longer held",
            extra={"tenant_id": str(tenant_id), "order_id": order_id, "redemption_id": row["id"]},
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
        session, account, redemption_id, now=ledger.now(), reason="hold cancelled", actor=actor
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
    at = now or ledger.now()
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

    def entry(kind: str, moved: int, balance_after: int, **extra: Any) -> dict[str, Any]:
        return {
            "tenant": account.tenant_id,
            "account": account.id,
            "kind": kind,
            "points": moved,
            "debt_delta": extra.get("debt_delta", 0),
            "balance_after": balance_after,
            "reason": extra.get("reason", reason),
            "rule": None,
            "source_key": extra.get("source_key", source_key),
            "order_id": None,
            "expires_at": None,
            "details": json.dumps(extra.get("details", details), ensure_ascii=False),
            "created_by": actor,
        }

    balance = account.balance + points
    written = await repository.insert_entry(session, entry("reversal", points, balance))
    assert written is not None, f"{source_key} was booked before"
    reversal_id, created_at = written
    await repository.restore_lots(session, account, reversal_id, lots)
    debt = account.debt
    if debt:
        settle = min(debt, points)
        balance -= settle
        debt -= settle
        settled = await repository.insert_entry(
            session,
            entry(
                "clawback",
                -settle,
                balance,
                debt_delta=-settle,
                reason="settles points owed from an earlier clawback",
                source_key=f"settle:{reversal_id}",
                details={"settles_for": reversal_id},
            ),
        )
        assert settled is not None
        taken = await repository.consume_lots(session, account.id, settle)
        await repository.record_consumption(session, account, settled[0], taken)
    await repository.update_account(session, account.id, balance=balance, debt=debt, spent=-points)
    booked = Booked(
        reversal_id,
        account.id,
        account.contact_id,
        "reversal",
        points,
        account.balance + points,
        created_at,
    )
    await ledger.announce(session, booked, account.tenant_id)
    return reversal_id
