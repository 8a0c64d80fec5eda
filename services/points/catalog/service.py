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
import logging
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from services.points.catalog import repository as catalog_sql
from services.points.catalog.schemas import ItemIn
from services.points.ledger import booking, repository
from services.points.ledger.repository import LockedAccount
from services.points.ledger.schemas import MAX_POINTS
from services.points.members import require_live_member
from services.points.rules.service import load_rules
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
    await require_live_member(session, tenant_id, contact_id)
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
    booked = await booking.spend(
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
        expires_at = booking.now() + timedelta(minutes=item["hold_minutes"])
        values |= {"status": "held", "expires_at": expires_at}
    redemption_id = await catalog_sql.insert_redemption(session, values)
    if redemption_id is None:
        raise Conflict(
            f"order {order_id!r} already has a redemption",
            code="order_already_held",
            details={"order_id": order_id},
        )
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
