"""Earnings as transactions of their own (`earn_by_rule` on the engine): one statement
that locks, caps, books and moves the balance, under real concurrency."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import httpx
import pytest

from services.points.ledger import service
from services.points.ledger.booking import Booked
from services.points.rules.service import TenantRules, load_rules
from shared.db import unit_of_work
from shared.runtime import Runtime
from tests.points.support import Brand, balance, make_brand, make_member, redeem, rows, verify
from tests.points.test_earning import configure, send


@pytest.fixture
async def brand(committed: Runtime) -> Brand:
    return await make_brand(committed)


async def rules_of(runtime: Runtime, brand: Brand) -> TenantRules:
    async with unit_of_work(runtime.sessionmaker) as session:
        return await load_rules(session, brand.tenant_id)


async def earn(
    runtime: Runtime,
    brand: Brand,
    member: uuid.UUID,
    source_key: str,
    *,
    rule: str = "checkin",
    base_points: int = 5,
    daily_cap: int | None = None,
    order_id: str | None = None,
    at: datetime | None = None,
) -> Booked | None:
    return await service.earn_by_rule(
        runtime.engine,
        brand.tenant_id,
        member,
        rule=rule,
        base_points=base_points,
        occurred_at=at or datetime.now(UTC),
        source_key=source_key,
        rules=await rules_of(runtime, brand),
        reason=rule,
        order_id=order_id,
        details={"amount_fen": base_points * 100} if order_id else None,
        daily_cap=daily_cap,
    )


async def test_twenty_identical_earnings_at_once_book_one(
    committed: Runtime, committed_client: httpx.AsyncClient, brand: Brand
) -> None:
    member = await make_member(committed, brand)
    results = await asyncio.gather(*(earn(committed, brand, member, "same") for _ in range(20)))
    booked = [r for r in results if r is not None]
    assert len(booked) == 20
    assert [r.replayed for r in booked].count(False) == 1
    assert len({r.entry_id for r in booked}) == 1
    assert {(r.points, r.balance_after) for r in booked} == {(5, 5)}
    assert await balance(committed_client, brand, member) == 5
    entries = await rows(
        committed, "SELECT kind, points, details->>'multiplier' FROM points_ledger"
    )
    assert entries == [("earn", 5, "1")]
    assert await verify(committed, brand) == []


async def test_the_daily_cap_holds_under_concurrency(
    committed: Runtime, committed_client: httpx.AsyncClient, brand: Brand
) -> None:
    member = await make_member(committed, brand)
    at = datetime(2026, 11, 20, 3, 0, tzinfo=UTC)
    results = await asyncio.gather(
        *(
            earn(
                committed,
                brand,
                member,
                f"c{i}",
                rule="comment",
                base_points=10,
                daily_cap=3,
                at=at,
            )
            for i in range(12)
        )
    )
    assert sum(r is not None for r in results) == 3
    assert await balance(committed_client, brand, member) == 30
    assert await verify(committed, brand) == []


async def test_a_member_in_debt_settles_it_first(
    committed: Runtime, committed_client: httpx.AsyncClient, brand: Brand
) -> None:
    member = await make_member(committed, brand)
    paid = await earn(
        committed, brand, member, "order:SO-1", rule="order_paid", base_points=500, order_id="SO-1"
    )
    assert paid is not None and paid.points == 500
    assert (await redeem(committed_client, brand, member, 450)).status_code == 201
    await send(committed, brand, "order.refunded", member, order_id="SO-1", refund_fen=50_000)
    settled = await earn(
        committed, brand, member, "order:SO-2", rule="order_paid", base_points=300, order_id="SO-2"
    )
    assert settled is not None and settled.settled
    account = (
        await committed_client.get(f"/v1/points/accounts/{member}", headers=brand.headers())
    ).json()
    assert (account["balance"], account["debt"]) == (0, 150)
    assert await verify(committed, brand) == []


async def test_promotions_multiply_in_the_statement(
    committed: Runtime, committed_client: httpx.AsyncClient, brand: Brand
) -> None:
    now = datetime.now(UTC)
    await configure(
        committed_client,
        brand,
        promotions=[
            {
                "name": "double",
                "multiplier": "2.5",
                "starts_at": datetime(2026, 1, 1, tzinfo=UTC).isoformat(),
                "ends_at": datetime(2099, 1, 1, tzinfo=UTC).isoformat(),
                "rules": ["checkin"],
            }
        ],
    )
    member = await make_member(committed, brand)
    first = await earn(committed, brand, member, "k1", base_points=5, at=now)
    other = await earn(committed, brand, member, "k2", rule="comment", base_points=5, at=now)
    assert first is not None and other is not None
    assert (first.points, other.points) == (12, 5)  # 5 x 2.5 rounded down; comments not promoted
    details = await rows(
        committed,
        "SELECT details->>'multiplier', details->>'base_points' FROM points_ledger ORDER BY id",
    )
    assert details == [("2.5", "5"), ("1", "5")]
    # Nothing to earn: no entry, no account change.
    assert await earn(committed, brand, member, "k3", base_points=0) is None
    assert await balance(committed_client, brand, member) == 17
