"""Property-based test of the points ledger: random sequences of earnings, spends,
operator adjustments, expiry runs and refunds on one member, each in its own
transaction, checked after every step against a plain model of the member's lots.

After each step: the account's balance, debt and lifetime sums equal the model's,
the balance is never negative (nor positive while points are owed), every lot holds
what the model says (debits take the oldest lots by earned_at, then id; a refund
takes its own order's lots first), a debit's lot moves are the oldest open lots, a
refused debit changes nothing, and `verify_tenant` finds nothing wrong.

Hypothesis calls its examples synchronously, so it runs in a worker thread and
hands each example, as one coroutine, to pytest-asyncio's session loop, where the
`committed` runtime (engine, sessionmaker) lives. Every example gets a tenant and
a member of its own; `committed` empties the tables afterwards.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.points.exceptions import InsufficientPoints
from services.points.ledger import booking as ledger
from services.points.ledger import expiry, repository, service
from services.points.ledger.verify import verify_tenant
from shared.db import unit_of_work
from shared.runtime import Runtime
from tests.points.support import make_brand, make_member

# -- operations ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Earn:
    """An order is paid: 1 point per whole yuan, as a lot of its own."""

    amount_fen: int
    days_ago: int  # earned_at = the example's start minus this many days
    expires_in: int  # days after the virtual clock; < 0: already past due (real time)
    pending: int | None  # pay an order refunded before its payment (index), else a new one


@dataclass(frozen=True)
class Spend:
    percent: int  # of the points available (at least 1); over 100: refused, nothing changes


@dataclass(frozen=True)
class Adjust:
    points: int  # an operator's credit (> 0) or debit (< 0)


@dataclass(frozen=True)
class Expire:
    days: int  # move the clock this far and run the expiry job


@dataclass(frozen=True)
class Refund:
    order: int  # index into the paid orders
    percent: int  # of the order's amount: < 100 partial, 100 full, > 100 more than paid


@dataclass(frozen=True)
class RefundUnpaid:
    refund_fen: int  # a refund that arrives before its order's payment


@dataclass(frozen=True)
class Replay:
    refund: int  # deliver an earlier refund again (same source key): nothing changes


Op = Earn | Spend | Adjust | Expire | Refund | RefundUnpaid | Replay

earns = st.builds(
    Earn,
    amount_fen=st.integers(100, 40_000),
    days_ago=st.integers(0, 30),
    expires_in=st.one_of(st.integers(1, 180), st.integers(-3, -1)),
    pending=st.none() | st.integers(0, 3),
)
spends = st.builds(Spend, percent=st.integers(1, 130))
credits = st.builds(Adjust, points=st.integers(1, 300))
debits = st.builds(Adjust, points=st.integers(-300, -1))
refunds = st.builds(Refund, order=st.integers(0, 5), percent=st.integers(1, 150))
# Repeats weigh the choice: mostly points coming and going, now and then the rest.
operations = st.lists(
    st.one_of(
        earns,
        credits,
        spends,
        earns,
        refunds,
        credits,
        spends,
        earns,
        debits,
        refunds,
        st.builds(Expire, days=st.integers(1, 30)),
        st.builds(RefundUnpaid, refund_fen=st.integers(1, 40_000)),
        st.builds(Replay, refund=st.integers(0, 5)),
    ),
    min_size=8,
    max_size=30,
)

# Always tried first, whatever Hypothesis draws.
SCENARIOS: list[list[Op]] = [
    # Oldest first across order lots earned out of order, and an operator's credit.
    [
        Earn(1_000, 5, 30, None),
        Earn(1_000, 10, 30, None),
        Spend(50),
        Adjust(20),
        Spend(50),
        Spend(100),
    ],
    # A refund larger than what is left becomes a debt, settled by later credits.
    [
        Earn(10_000, 0, 60, None),
        Spend(80),
        Refund(0, 100),
        Adjust(30),
        Earn(5_000, 0, 60, None),
        Refund(1, 40),
    ],
    # A refund takes its own order's points first (not the older order's); partial refunds
    # add up, refunding more than was paid takes no more than was earned, and a refund
    # delivered again changes nothing.
    [
        Earn(1_000, 10, 60, None),
        Earn(9_999, 0, 60, None),
        Refund(1, 30),
        Refund(1, 30),
        Replay(0),
        Refund(1, 150),
        Replay(1),
    ],
    # A refund before its payment is applied when the payment earns.
    [RefundUnpaid(5_000), Earn(20_000, 0, 60, 0), Spend(100)],
    # Points past their expiry are gone before a spend and in the expiry run; then a
    # spend of more than is left is refused.
    [Earn(3_000, 20, -1, None), Earn(2_000, 10, 5, None), Spend(50), Expire(10), Spend(101)],
]


# -- the model ----------------------------------------------------------------------------


@dataclass
class Lot:
    points: int
    remaining: int
    earned_at: datetime
    expires_at: datetime
    order_id: str | None
    seq: int  # creation order, which is id order


@dataclass
class Order:
    amount_fen: int = 0
    earned: int = 0  # 0 until paid
    refunded_fen: int = 0
    taken: int = 0  # points its refunds clawed back (now or as debt)


def consumption_rank(order_id: str | None, first_order: str | None) -> tuple[bool, ...]:
    """Debits take lots in order of (this rank, earned_at, id): the refunded order's own
    lots first (for a clawback), else none ahead of the others."""
    return (first_order is not None and order_id != first_order,)


@dataclass
class Model:
    lots: list[Lot] = field(default_factory=list)
    debt: int = 0
    lifetime_earned: int = 0
    lifetime_spent: int = 0
    orders: dict[str, Order] = field(default_factory=dict)

    @property
    def balance(self) -> int:
        return sum(lot.remaining for lot in self.lots)

    def add_lot(
        self, points: int, earned_at: datetime, expires_at: datetime, order_id: str | None
    ) -> None:
        self.lots.append(Lot(points, points, earned_at, expires_at, order_id, len(self.lots)))

    def expire(self, at: datetime) -> int:
        """Points past their expiry by `at` are gone."""
        gone = 0
        for lot in self.lots:
            if lot.remaining and lot.expires_at <= at:
                gone += lot.remaining
                lot.remaining = 0
        return gone

    def consume(self, points: int, first_order: str | None = None) -> list[tuple[int, int]]:
        """(seq, points) taken: the refunded order's own lots first, then the oldest."""
        open_lots = sorted(
            (lot for lot in self.lots if lot.remaining),
            key=lambda lot: (
                *consumption_rank(lot.order_id, first_order),
                lot.earned_at,
                lot.seq,
            ),
        )
        taken: list[tuple[int, int]] = []
        for lot in open_lots:
            if points == 0:
                break
            n = min(points, lot.remaining)
            lot.remaining -= n
            points -= n
            taken.append((lot.seq, n))
        assert points == 0, "the model's lots do not cover the debit"
        return taken

    def credit(
        self, points: int, earned_at: datetime, expires_at: datetime, order_id: str | None
    ) -> int:
        """A new lot; a debt is settled from the oldest lots first. The debt settled."""
        self.add_lot(points, earned_at, expires_at, order_id)
        settle = min(self.debt, points)
        self.debt -= settle
        self.consume(settle)
        return settle

    def available(self, now: datetime) -> int:
        """What a debit can take at `now`: lots past their expiry are gone by then."""
        return sum(lot.remaining for lot in self.lots if lot.expires_at > now)

    def debit(self, points: int, now: datetime) -> None:
        """A spend or an operator's debit that the balance covers."""
        self.expire(now)
        self.consume(points)

    def reconcile(self, order_id: str, now: datetime) -> int | None:
        """What an order's refunds take back and was not taken yet: (points taken now)."""
        order = self.orders[order_id]
        if not order.earned:
            return None
        refunded = min(order.amount_fen, order.refunded_fen)
        take = order.earned * refunded // order.amount_fen - order.taken
        if take <= 0:
            return None
        order.taken += take
        self.expire(now)
        taken_now = min(take, self.balance)
        self.debt += take - taken_now
        self.consume(taken_now, first_order=order_id)
        return taken_now


# -- what the database holds ---------------------------------------------------------------


@dataclass(frozen=True)
class LotRow:
    id: int
    points: int
    remaining: int
    earned_at: datetime
    expires_at: datetime
    order_id: str | None


@dataclass(frozen=True)
class Snapshot:
    balance: int = 0
    debt: int = 0
    lifetime_earned: int = 0
    lifetime_spent: int = 0
    lots: tuple[LotRow, ...] = ()
    violations: tuple[str, ...] = ()


# -- one example --------------------------------------------------------------------------


class Member:
    """One member's account, driven through the ledger and compared with the model."""

    def __init__(self, runtime: Runtime, tenant_id: uuid.UUID, contact_id: uuid.UUID) -> None:
        self.runtime = runtime
        self.tenant_id = tenant_id
        self.contact_id = contact_id
        self.start = datetime.now(UTC).replace(microsecond=0)
        self.clock = self.start  # where the expiry job believes "now" is
        self.model = Model()
        self.seen = Snapshot()
        self.paid: list[str] = []
        self.unpaid: list[str] = []  # refunded before their payment
        self.refunds: list[tuple[str, str, int]] = []  # (source key, order id, fen)
        self.serial = 0

    def name(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}{self.serial}"

    async def apply(self, op: Op) -> None:
        match op:
            case Earn():
                await self.earn(op)
            case Spend():
                await self.spend(op.percent)
            case Adjust():
                await self.adjust(op.points)
            case Expire():
                await self.expire(op.days)
            case Refund():
                await self.refund(op)
            case RefundUnpaid():
                await self.refund_unpaid(op.refund_fen)
            case Replay():
                await self.replay(op.refund)
        await self.check()

    async def _lock(self, session: AsyncSession) -> repository.LockedAccount:
        return await repository.lock_account(session, self.tenant_id, self.contact_id)

    async def earn(self, op: Earn) -> None:
        if op.pending is not None and self.unpaid:
            order_id = self.unpaid.pop(op.pending % len(self.unpaid))
        else:
            order_id = self.name("order-")
        points = op.amount_fen // 100
        earned_at = self.start - timedelta(days=op.days_ago)
        if op.expires_in < 0:
            expires_at = datetime.now(UTC) + timedelta(days=op.expires_in)
        else:
            expires_at = self.clock + timedelta(days=op.expires_in)
        async with unit_of_work(self.runtime.sessionmaker) as session:
            account = await self._lock(session)
            before = account.balance
            booked = await ledger.earn(
                session,
                account,
                points,
                expires_at=expires_at,
                earned_at=earned_at,
                source_key=f"order:{order_id}",
                rule="order_paid",
                reason=f"order {order_id}",
                order_id=order_id,
                details={"amount_fen": op.amount_fen},
            )
            clawed = await service.reconcile_order(
                session, account, order_id, source_key=f"clawback:paid:{order_id}"
            )
        assert not booked.replayed
        assert (booked.points, booked.balance_after) == (points, before + points)
        self.model.credit(points, earned_at, expires_at, order_id)
        self.model.lifetime_earned += points
        order = self.model.orders.setdefault(order_id, Order())
        order.amount_fen, order.earned = op.amount_fen, points
        self.paid.append(order_id)
        expected = self.model.reconcile(order_id, datetime.now(UTC))
        assert (clawed and -clawed.points) == expected, (clawed, expected)

    async def spend(self, percent: int) -> None:
        available = self.model.available(datetime.now(UTC))
        await self.debit(max(1, -(-available * percent // 100)), operator=False)

    async def adjust(self, points: int) -> None:
        if points < 0:
            await self.debit(-points, operator=True)
            return
        async with unit_of_work(self.runtime.sessionmaker) as session:
            booked = await service.adjust(
                session, self.tenant_id, self.contact_id, points, "property test", "tester"
            )
            lot = (
                await session.execute(
                    text("SELECT earned_at, expires_at FROM points_lots WHERE entry_id = :e"),
                    {"e": booked.entry_id},
                )
            ).one()
        assert (booked.kind, booked.points) == ("adjustment", points)
        assert lot.earned_at == booked.created_at < lot.expires_at
        self.model.credit(points, lot.earned_at, lot.expires_at, None)

    async def _debit(self, points: int, *, operator: bool) -> ledger.Booked:
        async with unit_of_work(self.runtime.sessionmaker) as session:
            if operator:
                return await service.adjust(
                    session, self.tenant_id, self.contact_id, -points, "property test", "tester"
                )
            booked = await ledger.spend(
                session,
                await self._lock(session),
                points,
                source_key=self.name("redemption:"),
                reason="coupon",
            )
            return booked

    async def debit(self, points: int, *, operator: bool) -> None:
        """A spend or an operator's debit: what has expired goes first, then the oldest
        lots; more than is left is refused and changes nothing."""
        now = datetime.now(UTC)
        available = self.model.available(now)
        if points > available:
            with pytest.raises(InsufficientPoints) as refused:
                await self._debit(points, operator=operator)
            assert refused.value.details == {"wanted": points, "balance": available}
            return
        booked = await self._debit(points, operator=operator)
        kind = "adjustment" if operator else "spend"
        assert (booked.kind, booked.points, booked.balance_after) == (
            kind,
            -points,
            available - points,
        )
        self.model.debit(points, now)
        if not operator:
            self.model.lifetime_spent += points
        await self.check_fifo(booked.entry_id, points, now)

    async def expire(self, days: int) -> None:
        self.clock += timedelta(days=days)
        async with unit_of_work(self.runtime.sessionmaker) as session:
            await expiry.expire_due(session, now=self.clock)
        self.model.expire(self.clock)

    async def _refund(self, order_id: str, fen: int, source_key: str) -> ledger.Booked | None:
        async with unit_of_work(self.runtime.sessionmaker) as session:
            return await service.record_refund(
                session,
                self.tenant_id,
                self.contact_id,
                order_id=order_id,
                refund_fen=fen,
                source_key=source_key,
            )

    async def refund(self, op: Refund) -> None:
        if not self.paid:
            return
        order_id = self.paid[op.order % len(self.paid)]
        order = self.model.orders[order_id]
        fen = max(1, order.amount_fen * op.percent // 100)
        source_key = self.name("refund:")
        now = datetime.now(UTC)
        booked = await self._refund(order_id, fen, source_key)
        self.refunds.append((source_key, order_id, fen))
        order.refunded_fen += fen
        expected = self.model.reconcile(order_id, now)
        assert (booked and -booked.points) == expected, (booked, expected)

    async def refund_unpaid(self, fen: int) -> None:
        order_id = self.name("order-")
        source_key = self.name("refund:")
        assert await self._refund(order_id, fen, source_key) is None
        self.refunds.append((source_key, order_id, fen))
        self.model.orders[order_id] = Order(refunded_fen=fen)
        self.unpaid.append(order_id)

    async def replay(self, index: int) -> None:
        if self.refunds:
            source_key, order_id, fen = self.refunds[index % len(self.refunds)]
            assert await self._refund(order_id, fen, source_key) is None

    async def check_fifo(self, entry_id: int, points: int, now: datetime) -> None:
        """A debit's lot moves are the oldest open lots (as last seen), in full but the last."""
        open_lots = sorted(
            (lot for lot in self.seen.lots if lot.remaining and lot.expires_at > now),
            key=lambda lot: (
                *consumption_rank(lot.order_id, None),
                lot.earned_at,
                lot.id,
            ),
        )
        expected: list[tuple[int, int]] = []
        for lot in open_lots:
            if points == 0:
                break
            n = min(points, lot.remaining)
            expected.append((lot.id, n))
            points -= n
        async with unit_of_work(self.runtime.sessionmaker) as session:
            moved = await repository.consumption_of(session, entry_id)
        assert sorted(moved) == sorted(expected), f"lots taken {moved}, oldest are {expected}"

    async def snapshot(self) -> Snapshot:
        async with unit_of_work(self.runtime.sessionmaker) as session:
            account = (
                await session.execute(
                    text(
                        "SELECT id, balance, debt, lifetime_earned, lifetime_spent"
                        " FROM points_accounts WHERE tenant_id = :t AND contact_id = :c"
                    ),
                    {"t": self.tenant_id, "c": self.contact_id},
                )
            ).first()
            _, violations = await verify_tenant(session, self.tenant_id)
            if account is None:
                return Snapshot(violations=tuple(str(v) for v in violations))
            lots = await session.execute(
                text(
                    "SELECT id, points, remaining, earned_at, expires_at, order_id"
                    " FROM points_lots WHERE account_id = :a ORDER BY id"
                ),
                {"a": account.id},
            )
            return Snapshot(
                account.balance,
                account.debt,
                account.lifetime_earned,
                account.lifetime_spent,
                tuple(LotRow(*row) for row in lots),
                tuple(str(v) for v in violations),
            )

    async def check(self) -> None:
        seen = self.seen = await self.snapshot()
        model = self.model
        assert seen.violations == (), seen.violations
        assert seen.balance >= 0
        assert seen.debt == 0 or seen.balance == 0, "points held while owing points"
        assert (seen.balance, seen.debt) == (model.balance, model.debt)
        assert (seen.lifetime_earned, seen.lifetime_spent) == (
            model.lifetime_earned,
            model.lifetime_spent,
        )
        assert [
            (lot.points, lot.remaining, lot.earned_at, lot.expires_at, lot.order_id)
            for lot in seen.lots
        ] == [
            (lot.points, lot.remaining, lot.earned_at, lot.expires_at, lot.order_id)
            for lot in model.lots
        ]


async def play(runtime: Runtime, ops: list[Op]) -> None:
    brand = await make_brand(runtime)
    member = Member(runtime, brand.tenant_id, await make_member(runtime, brand))
    for step, op in enumerate(ops):
        try:
            await member.apply(op)
        except AssertionError as failed:
            raise AssertionError(f"step {step} ({op}): {failed}") from failed


# -- the test -----------------------------------------------------------------------------


async def test_ledger_follows_the_model(committed: Runtime) -> None:
    loop = asyncio.get_running_loop()

    def run(coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=120)

    def ledger_follows_the_model(ops: list[Op]) -> None:
        run(play(committed, ops))

    test = given(ops=operations)(ledger_follows_the_model)
    for scenario in SCENARIOS:
        test = example(ops=scenario)(test)
    test = settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        database=None,  # no example database in the checkout; print_blob replays a failure
        print_blob=True,
        # One failure, shrunk without the explain phase: each replay costs a few database
        # transactions, and a shrink can run hundreds of them.
        report_multiple_bugs=False,
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
    )(test)
    await asyncio.to_thread(test)


async def test_spends_take_the_oldest_lot_first(committed: Runtime) -> None:
    # An order's point (earned first), then an operator's point: a spend of one point
    # takes the order's, the older.
    ops: list[Op] = [Earn(100, 0, 1, None), Adjust(1), Spend(1)]
    await play(committed, ops)
