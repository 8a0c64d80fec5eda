"""A batch of order.paid events (one transaction, the set-based handler) books exactly
what delivering them one by one books, in a number of statements that does not grow
with the batch."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, text

from services.points import tasks
from services.points.ledger import repository, service
from services.points.ledger.repository import RuleEarningArgs
from services.points.rules.service import load_rules
from shared.db import unit_of_work
from shared.events import Event
from shared.runtime import Runtime
from tests.points.support import Brand, make_brand, make_member, rows, verify

START = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
_EVENT_IDS = itertools.count(1)


def paid(brand: Brand, contact: uuid.UUID, order_id: str, yuan: int, at: datetime) -> Event:
    """An order.paid event as the bus hands it to the handler (ids unique, as in the outbox)."""
    return Event(
        id=next(_EVENT_IDS),
        event_id=uuid.uuid4(),
        type="order.paid",
        tenant_id=brand.tenant_id,
        payload={
            "contact_id": str(contact),
            "occurred_at": at.isoformat(),
            "properties": {"order_id": order_id, "amount_fen": yuan * 100},
        },
        created_at=at,
    )


async def deliver(runtime: Runtime, events: list[Event]) -> None:
    async with unit_of_work(runtime.sessionmaker) as session:
        await tasks.earn_order(session, events)


async def history(runtime: Runtime, brand: Brand) -> dict[str, uuid.UUID]:
    """The same members and past in any brand: label -> contact."""
    members = {
        label: await make_member(runtime, brand)
        for label in (
            "new-a",
            "new-b",
            "new-diamond",
            "new-twice",
            "near-silver",
            "merged",
            "plain",
            "replayed",
            "in-debt",
            "refunded-first",
        )
    }
    async with unit_of_work(runtime.sessionmaker) as session:
        await session.execute(
            text("UPDATE contacts SET merged_into_id = :s WHERE id = :c"),
            {"s": members["near-silver"], "c": members["merged"]},
        )
    past = START - timedelta(days=30)
    await deliver(
        runtime,
        [
            paid(brand, members["near-silver"], "H-1", 900, past),
            paid(brand, members["plain"], "H-2", 100, past),
            paid(brand, members["in-debt"], "H-3", 500, past),
        ],
    )
    async with unit_of_work(runtime.sessionmaker) as session:
        rules = await load_rules(session, brand.tenant_id)
        await service.redeem_points(
            session, brand.tenant_id, members["in-debt"], 450, "coupon", "test"
        )
        await service.record_refund(
            session,
            brand.tenant_id,
            members["in-debt"],
            order_id="H-3",
            refund_fen=50_000,
            source_key="refund:H-3",
        )
        await service.record_refund(
            session,
            brand.tenant_id,
            members["refunded-first"],
            order_id="RF-1",
            refund_fen=5_000,
            source_key="refund:RF-1",
        )
        # A payment booked whose tier step never ran (it failed after the earning):
        # its redelivery must give the member its tier.
        await repository.earn_by_rule(
            session,
            brand.tenant_id,
            RuleEarningArgs(
                contact_id=members["replayed"],
                rule="order_paid",
                base_points=300,
                multipliers={"": "1"},
                day=rules.local_day(past).isoformat(),
                daily_cap=None,
                source_key="order:R-1",
                reason="order R-1",
                order_id="R-1",
                details={"amount_fen": 30_000},
                earned_at=past,
                expires_at=rules.expires_at(past),
                growth_since=None,
            ),
        )
    return members


def batch(brand: Brand, members: dict[str, uuid.UUID]) -> list[Event]:
    """Payments in the order the bus delivers them (not contact order)."""
    orders = [
        ("new-twice", "T-1", 800),
        ("new-a", "A-1", 120),
        ("near-silver", "S-1", 200),  # crosses silver (900 + 200)
        ("new-diamond", "D-1", 60_000),  # joins at diamond at once
        ("replayed", "R-1", 300),  # booked before: replayed, and joins
        ("new-diamond", "D-2", 101),  # earns at diamond's 1.5
        ("in-debt", "X-1", 300),  # settles the debt first
        ("merged", "M-1", 4_000),  # for its survivor, near-silver: crosses gold
        ("plain", "P-1", 50),
        ("new-twice", "T-2", 300),  # crosses silver on its second order
        ("refunded-first", "RF-1", 100),  # half refunded before it was paid
        ("in-debt", "X-2", 200),
        ("new-b", "B-1", 0),  # earns nothing
        ("new-twice", "T-1", 800),  # the same order again: once
    ]
    return [
        paid(brand, members[label], order_id, yuan, START + timedelta(minutes=i))
        for i, (label, order_id, yuan) in enumerate(orders)
    ]


async def snapshot(runtime: Runtime, brand: Brand, members: dict[str, uuid.UUID]) -> Any:
    """Everything the earnings wrote for the brand, by member label (ids and the moments
    rows were written differ between brands; what they hold must not)."""
    label = {str(contact): name for name, contact in members.items()}
    accounts = {
        label[str(contact)]: account
        for contact, *account in await rows(
            runtime,
            "SELECT contact_id, balance, debt, lifetime_earned, lifetime_spent, tier, tier_since"
            " FROM points_accounts WHERE tenant_id = :t",
            t=brand.tenant_id,
        )
    }
    per_member: dict[str, dict[str, list[Any]]] = {name: {} for name in accounts}
    for part, sql in {
        # A settlement names the earning it settles by id: by its source here. A
        # redemption's key is random.
        "ledger": "SELECT a.contact_id, l.kind, l.points, l.debt_delta, l.balance_after, l.reason,"
        " l.rule, COALESCE((SELECT 'settle:' || s.source_key FROM points_ledger s"
        "                    WHERE s.id = (l.details->>'settles_for')::bigint),"
        "                  regexp_replace(l.source_key, '^redemption:.*', 'redemption')),"
        " l.order_id, l.expires_at, l.details - 'settles_for', l.created_by"
        " FROM points_ledger l JOIN points_accounts a ON a.id = l.account_id"
        " WHERE l.tenant_id = :t ORDER BY l.id",
        "lots": "SELECT a.contact_id, l.kind, l.rule, l.order_id, l.points, l.remaining,"
        " l.earned_at, l.expires_at FROM points_lots l"
        " JOIN points_accounts a ON a.id = l.account_id WHERE l.tenant_id = :t ORDER BY l.id",
        "tier_changes": "SELECT a.contact_id, c.from_tier, c.to_tier, c.reason, c.details"
        " FROM points_tier_changes c JOIN points_accounts a ON a.id = c.account_id"
        " WHERE c.tenant_id = :t ORDER BY c.id",
        "events": "SELECT payload->>'contact_id', type, payload - 'contact_id'"
        " FROM outbox_events WHERE tenant_id = :t AND type = 'tier.changed' ORDER BY id",
    }.items():
        for contact, *values in await rows(runtime, sql, t=brand.tenant_id):
            per_member[label[str(contact)]].setdefault(part, []).append(values)
    return accounts, per_member


async def test_a_batch_books_what_one_by_one_books(committed: Runtime) -> None:
    together, too, alone = [await make_brand(committed) for _ in range(3)]
    members_together = await history(committed, together)
    members_too = await history(committed, too)
    members_alone = await history(committed, alone)

    # Two brands' payments in one batch; the third brand's one at a time.
    await deliver(committed, batch(together, members_together) + batch(too, members_too))
    for one in batch(alone, members_alone):
        await deliver(committed, [one])

    accounts, per_member = await snapshot(committed, together, members_together)
    assert (accounts, per_member) == await snapshot(committed, alone, members_alone)
    assert (accounts, per_member) == await snapshot(committed, too, members_too)
    for brand in (together, too, alone):
        assert await verify(committed, brand) == []
    # And what that is, the rules of the events above:
    tiers = {name: account[4] for name, account in accounts.items()}
    assert tiers == {
        "new-a": "bronze",
        "new-diamond": "diamond",
        "new-twice": "silver",
        "near-silver": "gold",
        "plain": "bronze",
        "replayed": "bronze",
        "in-debt": "bronze",
        "refunded-first": "bronze",
        "new-b": None,  # its account opened, nothing earned: no tier yet
    }
    balances = {name: account[:2] for name, account in accounts.items()}
    assert balances["new-diamond"] == [60_000 + 151, 0]
    assert balances["new-twice"] == [1_100, 0]
    assert balances["in-debt"] == [50, 0]
    assert balances["refunded-first"] == [50, 0]
    moves = [
        (change[0], change[1], change[2]) for change in per_member["near-silver"]["tier_changes"]
    ]
    assert moves == [
        (None, "bronze", "joined"),
        ("bronze", "silver", "upgrade"),
        ("silver", "gold", "upgrade"),
    ]
    assert [e[0] for e in per_member["replayed"]["events"]] == ["tier.changed"]


@contextmanager
def counting_statements(runtime: Runtime) -> Iterator[list[str]]:
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    engine = runtime.engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", count)


# Contacts, rules, the earnings (new accounts, the locks, keys booked before, the entries
# with their lots and balances), account locks, growth, tiers, tier changes, their events
# (and the outbox's notice), refunds recorded before payment: whatever the batch's size.
STATEMENTS_PER_BATCH = 13


@pytest.mark.parametrize("size", [5, 50])
async def test_a_batch_costs_the_same_statements_whatever_its_size(
    committed: Runtime, size: int
) -> None:
    brand = await make_brand(committed)
    members = [await make_member(committed, brand) for _ in range(size)]
    returning = await make_member(committed, brand)
    # Every fifth member has a past: 900 points, 200 short of silver.
    past = START - timedelta(days=1)
    pasts = [
        paid(brand, contact, f"H-{i}", 900, past) for i, contact in enumerate(members) if i % 5 == 0
    ]
    await deliver(committed, [*pasts, paid(brand, returning, "H-R", 100, past)])
    events = [paid(brand, contact, f"O-{i}", 200, START) for i, contact in enumerate(members)]
    # And a redelivery of a payment booked before (replayed).
    events.append(paid(brand, returning, "H-R", 100, past))
    with counting_statements(committed) as statements:
        await deliver(committed, events)
    changes = await rows(
        committed,
        "SELECT reason, count(*) FROM points_tier_changes GROUP BY reason ORDER BY reason",
    )
    assert changes == [("joined", size + 1), ("upgrade", size // 5)]
    assert len(statements) == STATEMENTS_PER_BATCH, statements
    assert await verify(committed, brand) == []
