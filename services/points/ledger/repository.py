"""Every SQL statement of the points service.

Lock order, everywhere: the account row first (`lock_account`), then its lots.
All changes to an account's balance, debt and lots happen while its row is
locked, so concurrent requests on one account take turns and none can see a
balance another is about to spend.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession


@dataclass(frozen=True)
class LockedAccount:
    id: int
    tenant_id: uuid.UUID
    contact_id: uuid.UUID
    balance: int
    debt: int
    lifetime_earned: int
    tier: str | None


_LOCK_ACCOUNT = text(
    """
    INSERT INTO points_accounts (tenant_id, contact_id) VALUES (:tenant, :contact)
    ON CONFLICT ON CONSTRAINT uq_points_accounts_contact
    DO UPDATE SET updated_at = now()
    RETURNING id, balance, debt, lifetime_earned, tier
    """
)


async def lock_account(
    session: AsyncSession, tenant_id: uuid.UUID, contact_id: uuid.UUID
) -> LockedAccount:
    """The member's account, created if new, locked until the transaction ends."""
    row = (await session.execute(_LOCK_ACCOUNT, {"tenant": tenant_id, "contact": contact_id})).one()
    return LockedAccount(
        row.id, tenant_id, contact_id, row.balance, row.debt, row.lifetime_earned, row.tier
    )


# Many members' accounts at once, created if new, locked in contact order (the order
# of every batch that locks accounts, so concurrent batches cannot deadlock).
_LOCK_ACCOUNTS = text(
    """
    INSERT INTO points_accounts (tenant_id, contact_id)
    SELECT CAST(:tenant AS uuid), c FROM unnest(CAST(:contacts AS uuid[])) AS u(c) ORDER BY c
    ON CONFLICT ON CONSTRAINT uq_points_accounts_contact
    DO UPDATE SET updated_at = now()
    RETURNING id, contact_id, balance, debt, lifetime_earned, tier
    """
)


async def lock_accounts(
    session: AsyncSession, tenant_id: uuid.UUID, contact_ids: list[uuid.UUID]
) -> dict[uuid.UUID, LockedAccount]:
    """`lock_account` for many members (each once) in one statement."""
    if not contact_ids:
        return {}
    rows = await session.execute(_LOCK_ACCOUNTS, {"tenant": tenant_id, "contacts": contact_ids})
    return {
        row.contact_id: LockedAccount(
            row.id, tenant_id, row.contact_id, row.balance, row.debt, row.lifetime_earned, row.tier
        )
        for row in rows
    }


_INSERT_ENTRY = text(
    """
    INSERT INTO points_ledger (tenant_id, account_id, kind, points, debt_delta, balance_after,
                               reason, rule, source_key, order_id, expires_at, details,
                               created_by)
    VALUES (:tenant, :account, :kind, :points, :debt_delta, :balance_after, :reason, :rule,
            :source_key, :order_id, :expires_at, CAST(:details AS jsonb), :created_by)
    ON CONFLICT ON CONSTRAINT uq_points_ledger_source DO NOTHING
    RETURNING id, created_at
    """
)


async def insert_entry(
    session: AsyncSession, values: dict[str, Any]
) -> tuple[int, datetime] | None:
    """Append an entry; None when its source_key was booked before."""
    row = (await session.execute(_INSERT_ENTRY, values)).first()
    return None if row is None else (row.id, row.created_at)


async def entry_by_source(
    session: AsyncSession, tenant_id: uuid.UUID, source_key: str
) -> dict[str, Any] | None:
    row = (
        (
            await session.execute(
                text(
                    "SELECT l.*, a.contact_id FROM points_ledger l"
                    " JOIN points_accounts a ON a.id = l.account_id"
                    " WHERE l.tenant_id = :tenant AND l.source_key = :key"
                ),
                {"tenant": tenant_id, "key": source_key},
            )
        )
        .mappings()
        .first()
    )
    return dict(row) if row else None


async def insert_lot(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    account_id: int,
    entry_id: int,
    points: int,
    order_id: str | None,
    earned_at: datetime,
    expires_at: datetime,
    kind: str = "earn",
    rule: str | None = None,
) -> int:
    lot_id = await session.scalar(
        text(
            """
            INSERT INTO points_lots (tenant_id, account_id, entry_id, order_id, kind, rule,
                                     points, remaining, earned_at, expires_at)
            VALUES (:tenant, :account, :entry, :order_id, :kind, :rule, :points, :points,
                    :earned_at, :expires_at)
            RETURNING id
            """
        ),
        {
            "tenant": tenant_id,
            "account": account_id,
            "entry": entry_id,
            "order_id": order_id,
            "points": points,
            "earned_at": earned_at,
            "expires_at": expires_at,
            "kind": kind,
            "rule": rule,
        },
    )
    assert lot_id is not None
    return int(lot_id)


# migrations/versions/0006_points_earn_function.py: lock, multiplier, daily cap,
# entry, lot and balance in one statement.
_POINTS_EARN = (
    "SELECT * FROM points_earn($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
)

# Many members' earnings, set-based: what `points_earn` does row by row, in a few
# statements whatever the batch's size (earn_many_by_rule).
_CREATE_ACCOUNTS = text(
    """
    INSERT INTO points_accounts (tenant_id, contact_id)
    SELECT CAST(:tenant AS uuid), c FROM unnest(CAST(:contacts AS uuid[])) AS u(c)
     WHERE NOT EXISTS (SELECT 1 FROM points_accounts a
                        WHERE a.tenant_id = CAST(:tenant AS uuid) AND a.contact_id = u.c)
     ORDER BY c
    ON CONFLICT ON CONSTRAINT uq_points_accounts_contact DO NOTHING
    """
)

# A plain row lock leaves no new row version behind (the balance update writes one).
_SELECT_FOR_EARNING = text(
    """
    SELECT a.id, a.contact_id, a.balance, a.debt, a.tier FROM points_accounts a
     WHERE a.tenant_id = :tenant AND a.contact_id = ANY(CAST(:contacts AS uuid[]))
     ORDER BY a.contact_id
       FOR UPDATE
    """
)

# After the locks (a fresh snapshot): the source keys booked before, with their entries
# and their accounts' growth since each earning's growth window began.
_BOOKED_BEFORE = text(
    """
    SELECT DISTINCT ON (l.source_key)
           l.source_key, l.id, l.account_id, a.contact_id, a.tier, l.points, l.balance_after,
           l.created_at,
           CASE WHEN u.s IS NOT NULL THEN
               (SELECT COALESCE(sum(lt.points), 0) FROM points_lots lt
                 WHERE lt.account_id = l.account_id AND lt.kind = 'earn' AND lt.earned_at > u.s)
           END AS growth
      FROM unnest(CAST(:keys AS text[]), CAST(:since AS timestamptz[])) AS u(k, s)
      JOIN points_ledger l ON l.tenant_id = :tenant AND l.source_key = u.k
      JOIN points_accounts a ON a.id = l.account_id
     ORDER BY l.source_key
    """
)

# The rule's entries of each (account, rule, day), for the earnings with a daily cap.
_COUNT_ON_DAYS = text(
    """
    SELECT u.n, (SELECT count(*) FROM points_ledger l
                  WHERE l.account_id = u.a AND l.rule = u.r AND l.kind = 'earn'
                    AND l.details ->> 'day' = u.d) AS booked
      FROM unnest(CAST(:ns AS int[]), CAST(:accounts AS bigint[]), CAST(:rules AS text[]),
                  CAST(:days AS text[])) AS u(n, a, r, d)
    """
)

# The entries, their lots and the balances in one statement (one earning an account).
_BOOK_MANY = text(
    """
    WITH u AS (
        SELECT * FROM unnest(CAST(:accounts AS bigint[]), CAST(:points AS bigint[]),
                             CAST(:balances AS bigint[]), CAST(:reasons AS text[]),
                             CAST(:rules AS text[]), CAST(:keys AS text[]),
                             CAST(:orders AS text[]), CAST(:expires AS timestamptz[]),
                             CAST(:earned AS timestamptz[]), CAST(:details AS text[]),
                             CAST(:since AS timestamptz[]))
               WITH ORDINALITY AS u(account, points, balance_after, reason, rule, source_key,
                                    order_id, expires_at, earned_at, details, growth_since, n)
    ), entries AS (
        INSERT INTO points_ledger AS l (tenant_id, account_id, kind, points, debt_delta,
                                        balance_after, reason, rule, source_key, order_id,
                                        expires_at, details)
        SELECT CAST(:tenant AS uuid), u.account, 'earn', u.points, 0, u.balance_after,
               u.reason, u.rule, u.source_key, u.order_id, u.expires_at,
               CAST(u.details AS jsonb)
          FROM u ORDER BY u.n
        ON CONFLICT ON CONSTRAINT uq_points_ledger_source DO NOTHING
        RETURNING l.id, l.account_id, l.points, l.source_key, l.created_at
    ), lots AS (
        INSERT INTO points_lots (tenant_id, account_id, entry_id, order_id, kind, rule,
                                 points, remaining, earned_at, expires_at)
        SELECT CAST(:tenant AS uuid), e.account_id, e.id, u.order_id, 'earn', u.rule,
               e.points, e.points, COALESCE(u.earned_at, e.created_at), u.expires_at
          FROM entries e JOIN u ON u.source_key = e.source_key AND u.account = e.account_id
    ), balances AS (
        UPDATE points_accounts a
           SET balance = a.balance + e.points, lifetime_earned = a.lifetime_earned + e.points,
               updated_at = now()
          FROM entries e WHERE a.id = e.account_id
    )
    -- The growth the tier check needs: the lots before this statement, and this one.
    SELECT e.id, e.account_id, e.source_key, e.created_at,
           CASE WHEN u.growth_since IS NOT NULL THEN
               (SELECT COALESCE(sum(lt.points), 0) FROM points_lots lt
                 WHERE lt.account_id = e.account_id AND lt.kind = 'earn'
                   AND lt.earned_at > u.growth_since)
               + CASE WHEN COALESCE(u.earned_at, e.created_at) > u.growth_since
                      THEN e.points ELSE 0 END
           END AS growth
      FROM entries e JOIN u ON u.source_key = e.source_key AND u.account = e.account_id
    """
)


@dataclass(frozen=True)
class RuleEarningArgs:
    """One call of `points_earn`: a rule's earning for a member of the tenant."""

    contact_id: uuid.UUID
    rule: str
    base_points: int
    # Tier name -> multiplier ('' for a member without a tier yet), as decimal strings.
    multipliers: dict[str, str]
    day: str
    daily_cap: int | None
    source_key: str
    reason: str
    order_id: str | None
    details: dict[str, Any]
    earned_at: datetime
    expires_at: datetime
    growth_since: datetime | None


@dataclass(frozen=True)
class RuleEarning:
    """What `points_earn` did: booked, replayed, nothing, capped or debt (see there)."""

    outcome: str
    account_id: int
    contact_id: uuid.UUID
    tier: str | None
    entry_id: int | None
    points: int | None
    balance_after: int | None
    created_at: datetime | None
    growth: int | None


def _rule_earning(row: Any) -> RuleEarning:
    return RuleEarning(
        row["outcome"],
        row["account_id"],
        row["contact_id"],
        row["tier"],
        row["entry_id"],
        row["points"],
        row["balance_after"],
        row["created_at"],
        row["growth"],
    )


async def earn_by_rule(
    db: AsyncSession | AsyncEngine, tenant_id: uuid.UUID, earning: RuleEarningArgs
) -> RuleEarning:
    """Book a rule's earning. With a session it joins the session's transaction; with
    the engine it is a transaction of its own: one statement, one round trip."""
    args = (
        tenant_id,
        earning.contact_id,
        earning.rule,
        earning.base_points,
        json.dumps(earning.multipliers),
        earning.day,
        earning.daily_cap,
        earning.source_key,
        earning.reason,
        earning.order_id,
        json.dumps(earning.details, ensure_ascii=False),
        earning.earned_at,
        earning.expires_at,
        earning.growth_since,
    )
    if isinstance(db, AsyncSession):
        conn = await db.connection()
        row: Any = (await conn.exec_driver_sql(_POINTS_EARN, args)).mappings().one()
    else:
        async with db.connect() as conn:
            # The driver's own call: autocommit, with no BEGIN or COMMIT round trips.
            driver = (await conn.get_raw_connection()).driver_connection
            assert driver is not None
            row = await driver.fetchrow(_POINTS_EARN, *args)
    return _rule_earning(row)


async def earn_many_by_rule(
    session: AsyncSession, tenant_id: uuid.UUID, earnings: list[RuleEarningArgs]
) -> list[RuleEarning]:
    """`earn_by_rule` for many earnings of the tenant, one per member, set-based in the
    session's transaction (a few statements whatever their number); the results in the
    same order, the same as `points_earn` gives one by one. The accounts lock in contact
    order, so concurrent batches cannot deadlock."""
    if not earnings:
        return []
    contacts = [e.contact_id for e in earnings]
    if len(set(contacts)) != len(contacts):
        raise ValueError("earn_many_by_rule takes one earning a member")
    await session.execute(_CREATE_ACCOUNTS, {"tenant": tenant_id, "contacts": contacts})
    accounts = {
        row.contact_id: row
        for row in await session.execute(
            _SELECT_FOR_EARNING, {"tenant": tenant_id, "contacts": contacts}
        )
    }
    before = {
        row.source_key: row
        for row in await session.execute(
            _BOOKED_BEFORE,
            {
                "tenant": tenant_id,
                "keys": [e.source_key for e in earnings],
                "since": [e.growth_since for e in earnings],
            },
        )
    }
    capped = [
        i
        for i, e in enumerate(earnings)
        if e.daily_cap is not None and accounts[e.contact_id].debt <= 0
    ]
    counted: dict[int, int] = {}
    if capped:
        found = await session.execute(
            _COUNT_ON_DAYS,
            {
                "ns": capped,
                "accounts": [accounts[earnings[i].contact_id].id for i in capped],
                "rules": [earnings[i].rule for i in capped],
                "days": [earnings[i].day for i in capped],
            },
        )
        counted = {row.n: row.booked for row in found}
    results: list[RuleEarning | None] = [None] * len(earnings)
    to_book: list[tuple[int, int, str]] = []  # (index, points, multiplier)
    for i, e in enumerate(earnings):
        account = accounts[e.contact_id]

        def outcome(name: str, account: Any = account, e: RuleEarningArgs = e) -> RuleEarning:
            return RuleEarning(
                name, account.id, e.contact_id, account.tier, None, None, None, None, None
            )

        if account.debt > 0:
            results[i] = outcome("debt")
            continue
        multiplier = e.multipliers.get(account.tier or "")
        if multiplier is None:
            multiplier = e.multipliers.get("")
        points = None if multiplier is None else math.floor(e.base_points * Decimal(multiplier))
        if points is None or points <= 0:
            results[i] = outcome("nothing")
        elif e.daily_cap is not None and counted.get(i, 0) >= e.daily_cap:
            results[i] = outcome("capped")
        elif e.source_key in before:
            results[i] = _replayed(before[e.source_key])
        else:
            assert multiplier is not None
            to_book.append((i, points, multiplier))
    booked: dict[str, Any] = {}
    if to_book:
        rows = await session.execute(
            _BOOK_MANY,
            {
                "tenant": tenant_id,
                "accounts": [accounts[earnings[i].contact_id].id for i, _, _ in to_book],
                "points": [p for _, p, _ in to_book],
                "balances": [accounts[earnings[i].contact_id].balance + p for i, p, _ in to_book],
                "reasons": [earnings[i].reason for i, _, _ in to_book],
                "rules": [earnings[i].rule for i, _, _ in to_book],
                "keys": [earnings[i].source_key for i, _, _ in to_book],
                "orders": [earnings[i].order_id for i, _, _ in to_book],
                "expires": [earnings[i].expires_at for i, _, _ in to_book],
                "earned": [earnings[i].earned_at for i, _, _ in to_book],
                "details": [
                    json.dumps({**earnings[i].details, "multiplier": m}, ensure_ascii=False)
                    for i, _, m in to_book
                ],
                "since": [earnings[i].growth_since for i, _, _ in to_book],
            },
        )
        booked = {row.source_key: row for row in rows}
    for i, points, _ in to_book:
        e = earnings[i]
        account = accounts[e.contact_id]
        entry = booked.get(e.source_key)
        if entry is None or entry.account_id != account.id:
            # Booked for another member (concurrently, or earlier in this batch).
            again = (
                await session.execute(
                    _BOOKED_BEFORE,
                    {"tenant": tenant_id, "keys": [e.source_key], "since": [e.growth_since]},
                )
            ).one()
            results[i] = _replayed(again)
            continue
        results[i] = RuleEarning(
            "booked",
            account.id,
            e.contact_id,
            account.tier,
            entry.id,
            points,
            account.balance + points,
            entry.created_at,
            entry.growth,
        )
    done = [r for r in results if r is not None]
    assert len(done) == len(earnings)
    return done


def _replayed(entry: Any) -> RuleEarning:
    """An earning whose source key was booked before: that entry (whichever account's)."""
    return RuleEarning(
        "replayed",
        entry.account_id,
        entry.contact_id,
        entry.tier,
        entry.id,
        entry.points,
        entry.balance_after,
        entry.created_at,
        entry.growth,
    )


# Take `n` points from the account's open lots: the lots of `first_order` (a
# refunded order's own points) first, then the oldest. Set-based: one statement.
_CONSUME = text(
    """
    WITH ordered AS (
        SELECT id, remaining,
               sum(remaining) OVER (
                   ORDER BY COALESCE(order_id = CAST(:first_order AS text), false) DESC,
                            earned_at, id
               ) - remaining AS before
          FROM points_lots
         WHERE account_id = :account AND remaining > 0
    ), take AS (
        SELECT id, least(remaining, :n - before) AS n FROM ordered WHERE before < :n
    )
    UPDATE points_lots l SET remaining = l.remaining - take.n
      FROM take WHERE l.id = take.id
    RETURNING l.id, take.n
    """
)


async def consume_lots(
    session: AsyncSession, account_id: int, points: int, first_order: str | None = None
) -> list[tuple[int, int]]:
    """(lot id, points taken) for `points` taken from the account's lots."""
    if points <= 0:
        return []
    rows = await session.execute(
        _CONSUME, {"account": account_id, "n": points, "first_order": first_order}
    )
    taken = sorted((int(r.id), int(r.n)) for r in rows)
    assert sum(n for _, n in taken) == points, "lots do not cover the balance"
    return taken


_MOVES = text(
    """
    INSERT INTO points_lot_moves (tenant_id, entry_id, lot_id, points)
    SELECT :tenant, :entry, lot_id, n
      FROM unnest(CAST(:lots AS bigint[]), CAST(:ns AS int[])) AS t(lot_id, n)
    """
)


async def record_consumption(
    session: AsyncSession, account: LockedAccount, entry_id: int, taken: list[tuple[int, int]]
) -> None:
    """Which lots an entry took its points from (the trail of every lot's remaining)."""
    if taken:
        await session.execute(
            _MOVES,
            {
                "tenant": account.tenant_id,
                "entry": entry_id,
                "lots": [lot for lot, _ in taken],
                "ns": [-n for _, n in taken],
            },
        )


async def consumption_of(session: AsyncSession, entry_id: int) -> list[tuple[int, int]]:
    rows = await session.execute(
        text(
            "SELECT lot_id, -points AS n FROM points_lot_moves WHERE entry_id = :e AND points < 0"
        ),
        {"e": entry_id},
    )
    return [(int(r.lot_id), int(r.n)) for r in rows]


async def restore_lots(
    session: AsyncSession, account: LockedAccount, entry_id: int, taken: list[tuple[int, int]]
) -> None:
    """Give back what `consume_lots` took (a reversal, entry `entry_id`), to the same lots."""
    if not taken:
        return
    await session.execute(
        text(
            """
            UPDATE points_lots l SET remaining = l.remaining + t.n
              FROM unnest(CAST(:ids AS bigint[]), CAST(:ns AS int[])) AS t(id, n)
             WHERE l.id = t.id
            """
        ),
        {"ids": [i for i, _ in taken], "ns": [n for _, n in taken]},
    )
    await session.execute(
        _MOVES,
        {
            "tenant": account.tenant_id,
            "entry": entry_id,
            "lots": [lot for lot, _ in taken],
            "ns": [n for _, n in taken],
        },
    )


async def update_account(
    session: AsyncSession,
    account_id: int,
    *,
    balance: int,
    debt: int,
    earned: int = 0,
    spent: int = 0,
) -> None:
    await session.execute(
        text(
            """
            UPDATE points_accounts
               SET balance = :balance, debt = :debt,
                   lifetime_earned = lifetime_earned + :earned,
                   lifetime_spent = lifetime_spent + :spent, updated_at = now()
             WHERE id = :id
            """
        ),
        {"id": account_id, "balance": balance, "debt": debt, "earned": earned, "spent": spent},
    )


async def order_points(session: AsyncSession, tenant_id: uuid.UUID, order_id: str) -> int:
    """Points an order has earned so far, net of what its refunds already clawed back."""
    value = await session.scalar(
        text(
            """
            SELECT COALESCE(sum(points - debt_delta), 0) FROM points_ledger
             WHERE tenant_id = :tenant AND order_id = :order_id
               AND kind IN ('earn', 'clawback')
            """
        ),
        {"tenant": tenant_id, "order_id": order_id},
    )
    return int(value or 0)


async def count_on_day(
    session: AsyncSession, account_id: int, rule: str, day: str
) -> tuple[int, int]:
    """(entries, points) `rule` earned the account for events of local day `day`."""
    row = (
        await session.execute(
            text(
                "SELECT count(*) AS n, COALESCE(sum(points), 0) AS p FROM points_ledger"
                " WHERE account_id = :account AND rule = :rule AND kind = 'earn'"
                " AND details->>'day' = :day"
            ),
            {"account": account_id, "rule": rule, "day": day},
        )
    ).one()
    return int(row.n), int(row.p)


async def record_refund(
    session: AsyncSession, tenant_id: uuid.UUID, order_id: str, source_key: str, refund_fen: int
) -> bool:
    """False when this refund (its source_key) was recorded before."""
    recorded = await session.scalar(
        text(
            "INSERT INTO points_order_refunds (tenant_id, order_id, source_key, refund_fen)"
            " VALUES (:t, :o, :k, :f)"
            " ON CONFLICT ON CONSTRAINT uq_points_order_refunds_source DO NOTHING RETURNING id"
        ),
        {"t": tenant_id, "o": order_id, "k": source_key, "f": refund_fen},
    )
    return recorded is not None


async def orders_with_refunds(
    session: AsyncSession, tenant_id: uuid.UUID, order_ids: list[str]
) -> list[str]:
    """Which of these orders have a refund recorded."""
    if not order_ids:
        return []
    rows = await session.execute(
        text(
            "SELECT DISTINCT order_id FROM points_order_refunds"
            " WHERE tenant_id = :t AND order_id = ANY(CAST(:o AS text[])) ORDER BY order_id"
        ),
        {"t": tenant_id, "o": order_ids},
    )
    return [str(order_id) for order_id in rows.scalars()]


async def order_earning(
    session: AsyncSession, tenant_id: uuid.UUID, order_id: str
) -> tuple[int, int]:
    """(points the order earned, its amount in fen)."""
    row = (
        await session.execute(
            text(
                """
                SELECT COALESCE(sum(points), 0) AS points,
                       COALESCE(max((details->>'amount_fen')::bigint), 0) AS amount
                  FROM points_ledger
                 WHERE tenant_id = :t AND order_id = :o AND kind = 'earn'
                """
            ),
            {"t": tenant_id, "o": order_id},
        )
    ).one()
    return int(row.points), int(row.amount)


async def order_refunded(session: AsyncSession, tenant_id: uuid.UUID, order_id: str) -> int:
    value = await session.scalar(
        text(
            "SELECT COALESCE(sum(refund_fen), 0) FROM points_order_refunds"
            " WHERE tenant_id = :t AND order_id = :o"
        ),
        {"t": tenant_id, "o": order_id},
    )
    return int(value or 0)


async def balance_of(session: AsyncSession, account_id: int) -> int:
    value = await session.scalar(
        text("SELECT balance FROM points_accounts WHERE id = :a"), {"a": account_id}
    )
    return int(value or 0)


async def account_row(
    session: AsyncSession, tenant_id: uuid.UUID, contact_id: uuid.UUID
) -> dict[str, Any] | None:
    row = (
        (
            await session.execute(
                text(
                    "SELECT id, balance, debt, lifetime_earned, lifetime_spent, tier, tier_since,"
                    " updated_at FROM points_accounts WHERE tenant_id = :t AND contact_id = :c"
                ),
                {"t": tenant_id, "c": contact_id},
            )
        )
        .mappings()
        .first()
    )
    return dict(row) if row else None


async def tenant_ids(session: AsyncSession) -> list[uuid.UUID]:
    return list((await session.execute(text("SELECT id FROM tenants ORDER BY id"))).scalars())


async def lots_expiring_by(
    session: AsyncSession, account_id: int, horizon: datetime
) -> list[tuple[datetime, int]]:
    """(expires_at, remaining) of the account's open lots expiring by `horizon`."""
    rows = await session.execute(
        text(
            "SELECT expires_at, remaining FROM points_lots"
            " WHERE account_id = :a AND remaining > 0 AND expires_at <= :h ORDER BY expires_at"
        ),
        {"a": account_id, "h": horizon},
    )
    return [(r.expires_at, int(r.remaining)) for r in rows]


async def ledger_entries(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    contact_id: uuid.UUID,
    before: int | None,
    limit: int,
) -> list[dict[str, Any]]:
    """A member's entries, newest first, below entry id `before`."""
    rows = await session.execute(
        text(
            """
            SELECT l.id, l.kind, l.points, l.debt_delta, l.balance_after, l.reason,
                   l.rule, l.order_id, l.expires_at, l.details, l.created_by, l.created_at
              FROM points_ledger l JOIN points_accounts a ON a.id = l.account_id
             WHERE a.tenant_id = :t AND a.contact_id = :c
               AND (CAST(:before AS bigint) IS NULL OR l.id < :before)
             ORDER BY l.id DESC LIMIT :limit
            """
        ),
        {"t": tenant_id, "c": contact_id, "before": before, "limit": limit},
    )
    return [dict(r) for r in rows.mappings()]
