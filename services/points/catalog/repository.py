"""Every SQL statement of the redemption catalog (items, lottery prizes, redemptions).

Lock order, as in `repository`: the member's account first, then the item row,
then its prize rows. Item stock and prize stock only move by guarded UPDATEs.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

_ITEM_COLUMNS = (
    "id, sku, kind, name, points_cost, cash_fen, coupon_value_fen, stock, per_member_limit,"
    " hold_minutes, active, created_at"
)


async def insert_item(
    session: AsyncSession, tenant_id: uuid.UUID, values: dict[str, Any]
) -> uuid.UUID | None:
    """The new item's id; None when the tenant already has an item with this sku."""
    item_id: uuid.UUID | None = await session.scalar(
        text(
            """
            INSERT INTO points_items (id, tenant_id, sku, kind, name, points_cost, cash_fen,
                                      coupon_value_fen, stock, per_member_limit, hold_minutes,
                                      active)
            VALUES (:id, :tenant, :sku, :kind, :name, :points_cost, :cash_fen,
                    :coupon_value_fen, :stock, :per_member_limit, :hold_minutes, :active)
            ON CONFLICT ON CONSTRAINT uq_points_items_sku DO NOTHING
            RETURNING id
            """
        ),
        {"id": uuid.uuid4(), "tenant": tenant_id, **values},
    )
    return item_id


async def insert_prizes(
    session: AsyncSession, tenant_id: uuid.UUID, item_id: uuid.UUID, prizes: list[dict[str, Any]]
) -> None:
    """A lottery's prize table, in the order given (position 1, 2, ...): one statement."""
    await session.execute(
        text(
            """
            INSERT INTO points_lottery_prizes (tenant_id, item_id, position, name, weight, stock,
                                               is_blank)
            SELECT :tenant, :item, t.position, t.name, t.weight, t.stock, t.is_blank
              FROM unnest(CAST(:positions AS int[]), CAST(:names AS text[]),
                          CAST(:weights AS int[]), CAST(:stocks AS int[]),
                          CAST(:blanks AS boolean[]))
                   AS t(position, name, weight, stock, is_blank)
            """
        ),
        {
            "tenant": tenant_id,
            "item": item_id,
            "positions": list(range(1, len(prizes) + 1)),
            "names": [p["name"] for p in prizes],
            "weights": [p["weight"] for p in prizes],
            "stocks": [p["stock"] for p in prizes],
            "blanks": [p["blank"] for p in prizes],
        },
    )


async def item(
    session: AsyncSession, tenant_id: uuid.UUID, item_id: uuid.UUID, *, lock: bool = False
) -> dict[str, Any] | None:
    """One item of the tenant; with `lock`, its row stays locked until the transaction ends
    (take the member's account lock first)."""
    sql = f"SELECT {_ITEM_COLUMNS} FROM points_items WHERE tenant_id = :t AND id = :id"
    row = (
        (
            await session.execute(
                text(sql + (" FOR UPDATE" if lock else "")), {"t": tenant_id, "id": item_id}
            )
        )
        .mappings()
        .first()
    )
    return dict(row) if row else None


async def item_id_by_sku(session: AsyncSession, tenant_id: uuid.UUID, sku: str) -> uuid.UUID | None:
    item_id: uuid.UUID | None = await session.scalar(
        text("SELECT id FROM points_items WHERE tenant_id = :t AND sku = :sku"),
        {"t": tenant_id, "sku": sku},
    )
    return item_id


async def list_items(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    *,
    kind: str | None,
    active: bool | None,
    after_sku: str | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Items in sku order, after `after_sku` (the cursor)."""
    rows = await session.execute(
        text(
            f"""
            SELECT {_ITEM_COLUMNS} FROM points_items
             WHERE tenant_id = :t
               AND (CAST(:kind AS text) IS NULL OR kind = :kind)
               AND (CAST(:active AS boolean) IS NULL OR active = :active)
               AND (CAST(:after AS text) IS NULL OR sku > :after)
             ORDER BY sku LIMIT :limit
            """
        ),
        {"t": tenant_id, "kind": kind, "active": active, "after": after_sku, "limit": limit},
    )
    return [dict(r) for r in rows.mappings()]


async def prizes_of(
    session: AsyncSession, item_ids: Sequence[uuid.UUID], *, lock: bool = False
) -> list[dict[str, Any]]:
    """Prize lines of the items, by item and position (locked in that order with `lock`)."""
    if not item_ids:
        return []
    rows = await session.execute(
        text(
            "SELECT id, item_id, position, name, weight, stock, is_blank AS blank"
            " FROM points_lottery_prizes WHERE item_id = ANY(:items)"
            " ORDER BY item_id, position, id" + (" FOR UPDATE" if lock else "")
        ),
        {"items": list(item_ids)},
    )
    return [dict(r) for r in rows.mappings()]


_PATCHABLE = ("name", "active", "points_cost", "stock", "per_member_limit", "hold_minutes")


async def update_item(
    session: AsyncSession, tenant_id: uuid.UUID, item_id: uuid.UUID, changes: dict[str, Any]
) -> bool:
    """Apply `changes` (a subset of the patchable columns); False when there is no such item."""
    columns = [c for c in _PATCHABLE if c in changes]
    assignments = ", ".join(f"{c} = :{c}" for c in columns) or "id = id"
    result = await session.execute(
        text(f"UPDATE points_items SET {assignments} WHERE tenant_id = :t AND id = :id"),
        {"t": tenant_id, "id": item_id, **{c: changes[c] for c in columns}},
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def take_item_stock(session: AsyncSession, item_id: uuid.UUID) -> bool:
    """One unit of a limited item's stock; False when none is left."""
    taken = await session.scalar(
        text("UPDATE points_items SET stock = stock - 1 WHERE id = :id AND stock > 0 RETURNING id"),
        {"id": item_id},
    )
    return taken is not None


async def give_back_item_stock(session: AsyncSession, counts: dict[uuid.UUID, int]) -> None:
    """Return released units to the items' stock, in item id order (one lock order)."""
    for item_id in sorted(counts):
        await session.execute(
            text("UPDATE points_items SET stock = stock + :n WHERE id = :id AND stock IS NOT NULL"),
            {"id": item_id, "n": counts[item_id]},
        )


async def take_prize_stock(session: AsyncSession, prize_id: int) -> bool:
    """One unit of a prize (always, when unlimited); False when none is left."""
    taken = await session.scalar(
        text(
            "UPDATE points_lottery_prizes SET stock = stock - 1"
            " WHERE id = :id AND (stock IS NULL OR stock > 0) RETURNING id"
        ),
        {"id": prize_id},
    )
    return taken is not None


async def active_redemptions(session: AsyncSession, item_id: uuid.UUID, account_id: int) -> int:
    """The member's redemptions of the item that count towards its limit (not released)."""
    value = await session.scalar(
        text(
            "SELECT count(*) FROM points_redemptions"
            " WHERE item_id = :item AND account_id = :account AND status <> 'released'"
        ),
        {"item": item_id, "account": account_id},
    )
    return int(value or 0)


async def insert_redemption(session: AsyncSession, values: dict[str, Any]) -> int | None:
    """The new redemption's id; None when its order_id already has one."""
    redemption_id: int | None = await session.scalar(
        text(
            """
            INSERT INTO points_redemptions (tenant_id, item_id, account_id, contact_id, status,
                                            points, cash_fen, entry_id, order_id, expires_at,
                                            seed, prize_id, outcome)
            VALUES (:tenant, :item, :account, :contact, :status, :points, :cash_fen, :entry,
                    :order_id, :expires_at, :seed, :prize_id, CAST(:outcome AS jsonb))
            ON CONFLICT ON CONSTRAINT uq_points_redemptions_order DO NOTHING
            RETURNING id
            """
        ),
        {**values, "outcome": json.dumps(values["outcome"], ensure_ascii=False)},
    )
    return redemption_id


_VIEW = """
    SELECT r.id, r.item_id, i.kind, r.contact_id, r.status, r.points, r.cash_fen, a.balance,
           r.entry_id, r.reversal_entry_id, r.order_id, r.expires_at, r.seed, r.prize_id,
           p.name AS prize_name, p.is_blank AS prize_blank, r.outcome, r.account_id,
           r.tenant_id, r.created_at, r.updated_at
      FROM points_redemptions r
      JOIN points_items i ON i.id = r.item_id
      JOIN points_accounts a ON a.id = r.account_id
      LEFT JOIN points_lottery_prizes p ON p.id = r.prize_id
"""


async def redemption(
    session: AsyncSession, tenant_id: uuid.UUID, redemption_id: int
) -> dict[str, Any] | None:
    """A redemption with its item's kind, its prize and the member's current balance."""
    row = (
        (
            await session.execute(
                text(_VIEW + " WHERE r.tenant_id = :t AND r.id = :id"),
                {"t": tenant_id, "id": redemption_id},
            )
        )
        .mappings()
        .first()
    )
    return dict(row) if row else None


async def lock_redemption(session: AsyncSession, redemption_id: int) -> dict[str, Any] | None:
    """The redemption row, locked (after its member's account)."""
    row = (
        (
            await session.execute(
                text(
                    "SELECT id, item_id, account_id, status, points, entry_id"
                    " FROM points_redemptions WHERE id = :id FOR UPDATE"
                ),
                {"id": redemption_id},
            )
        )
        .mappings()
        .first()
    )
    return dict(row) if row else None


async def redemption_for_order(
    session: AsyncSession, tenant_id: uuid.UUID, order_id: str
) -> dict[str, Any] | None:
    row = (
        (
            await session.execute(
                text(
                    "SELECT id, account_id, contact_id, status FROM points_redemptions"
                    " WHERE tenant_id = :t AND order_id = :o"
                ),
                {"t": tenant_id, "o": order_id},
            )
        )
        .mappings()
        .first()
    )
    return dict(row) if row else None


async def redemptions_for_orders(
    session: AsyncSession, tenant_id: uuid.UUID, order_ids: list[str]
) -> list[dict[str, Any]]:
    """The redemptions paid by any of these orders (at most one each), by account id."""
    if not order_ids:
        return []
    rows = await session.execute(
        text(
            "SELECT id, account_id, contact_id, order_id, status FROM points_redemptions"
            " WHERE tenant_id = :t AND order_id = ANY(CAST(:o AS text[]))"
            " ORDER BY account_id, id"
        ),
        {"t": tenant_id, "o": order_ids},
    )
    return [dict(row) for row in rows.mappings()]


async def set_status(
    session: AsyncSession,
    redemption_id: int,
    *,
    from_status: str,
    to_status: str,
    reversal_entry_id: int | None = None,
) -> bool:
    """Move a redemption between statuses; False when it was no longer in `from_status`."""
    moved = await session.scalar(
        text(
            """
            UPDATE points_redemptions
               SET status = :to, updated_at = now(),
                   reversal_entry_id = COALESCE(CAST(:reversal AS bigint), reversal_entry_id)
             WHERE id = :id AND status = :from
            RETURNING id
            """
        ),
        {"id": redemption_id, "from": from_status, "to": to_status, "reversal": reversal_entry_id},
    )
    return moved is not None


async def due_holds(session: AsyncSession, now: datetime, limit: int) -> list[dict[str, Any]]:
    """Holds whose time ran out by `now`, by account (the order their accounts get locked)."""
    rows = await session.execute(
        text(
            """
            SELECT id, tenant_id, account_id, contact_id FROM points_redemptions
             WHERE status = 'held' AND expires_at <= :now
             ORDER BY account_id, id LIMIT :limit
            """
        ),
        {"now": now, "limit": limit},
    )
    return [dict(r) for r in rows.mappings()]


async def restorable_consumption(
    session: AsyncSession, entry_id: int, now: datetime
) -> tuple[list[tuple[int, int]], int]:
    """What a spend took from lots that are still valid at `now` (lot id, points), and the
    points it took from lots that have expired since (those are not given back)."""
    rows = await session.execute(
        text(
            "SELECT m.lot_id, -m.points AS n, l.expires_at > :now AS valid"
            " FROM points_lot_moves m JOIN points_lots l ON l.id = m.lot_id"
            " WHERE m.entry_id = :e AND m.points < 0 ORDER BY m.lot_id"
        ),
        {"e": entry_id, "now": now},
    )
    restorable: list[tuple[int, int]] = []
    expired = 0
    for r in rows:
        if r.valid:
            restorable.append((int(r.lot_id), int(r.n)))
        else:
            expired += int(r.n)
    return restorable, expired
