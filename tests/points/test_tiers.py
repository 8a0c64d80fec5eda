"""Tiers: immediate upgrades, tier multipliers, retention reviews across a simulated clock."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from services.points.ledger import service
from services.points.rules.service import load_rules
from services.points.tiers import service as tiers
from shared.db import unit_of_work
from shared.runtime import Runtime
from tests.points.support import Brand, make_brand, make_member, rows

SHANGHAI = timedelta(hours=8)


@pytest.fixture
async def brand(committed: Runtime) -> Brand:
    return await make_brand(committed)


async def order(
    runtime: Runtime,
    brand: Brand,
    member: uuid.UUID,
    yuan: int,
    at: datetime,
    *,
    own_transaction: bool = False,
) -> None:
    """An order paid at `at` (the simulated clock), as the order.paid handler books it
    (in its session), or as a transaction of its own (on the engine)."""
    async with unit_of_work(runtime.sessionmaker) as session:
        rules = await load_rules(session, brand.tenant_id)
        await service.earn_by_rule(
            runtime.engine if own_transaction else session,
            brand.tenant_id,
            member,
            rule="order_paid",
            base_points=yuan,
            occurred_at=at,
            source_key=f"order:{uuid.uuid4()}",
            rules=rules,
            reason="order",
            order_id=f"SO-{uuid.uuid4().hex[:8]}",
            details={"amount_fen": yuan * 100},
        )


async def review(runtime: Runtime, brand: Brand, at: datetime) -> int | None:
    async with unit_of_work(runtime.sessionmaker) as session:
        rules = await load_rules(session, brand.tenant_id)
        return await tiers.review(session, brand.tenant_id, rules, at)


async def tier_of(client: httpx.AsyncClient, brand: Brand, member: uuid.UUID) -> dict[str, Any]:
    response = await client.get(f"/v1/points/accounts/{member}/tier", headers=brand.headers())
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.mark.parametrize("own_transaction", [False, True], ids=["in-session", "on-engine"])
async def test_upgrade_is_immediate_and_shows_what_is_missing(
    committed: Runtime, committed_client: httpx.AsyncClient, brand: Brand, own_transaction: bool
) -> None:
    member = await make_member(committed, brand)
    fresh = await tier_of(committed_client, brand, member)
    assert (fresh["tier"], fresh["next_tier"], fresh["missing"]) == ("bronze", "silver", 1000)
    now = datetime.now(UTC)
    await order(committed, brand, member, 600, now, own_transaction=own_transaction)
    await order(committed, brand, member, 500, now, own_transaction=own_transaction)
    status = await tier_of(committed_client, brand, member)
    assert (status["tier"], status["growth"], status["next_tier"], status["missing"]) == (
        "silver",
        1100,
        "gold",
        3900,
    )
    changes = await rows(
        committed, "SELECT from_tier, to_tier, reason FROM points_tier_changes ORDER BY id"
    )
    assert changes == [(None, "bronze", "joined"), ("bronze", "silver", "upgrade")]
    events = await rows(
        committed,
        "SELECT payload->>'from', payload->>'to' FROM outbox_events"
        " WHERE type = 'tier.changed' ORDER BY id",
    )
    assert events == [(None, "bronze"), ("bronze", "silver")]


@pytest.mark.parametrize("own_transaction", [False, True], ids=["in-session", "on-engine"])
async def test_diamond_earns_with_its_multiplier(
    committed: Runtime, committed_client: httpx.AsyncClient, brand: Brand, own_transaction: bool
) -> None:
    member = await make_member(committed, brand)
    now = datetime.now(UTC)
    await order(committed, brand, member, 50_000, now, own_transaction=own_transaction)
    assert (await tier_of(committed_client, brand, member))["tier"] == "diamond"
    await order(committed, brand, member, 101, now, own_transaction=own_transaction)
    last = await rows(committed, "SELECT points FROM points_ledger ORDER BY id DESC LIMIT 1")
    assert last == [(151,)]  # diamond earns 1.5x, rounded down


async def test_quarterly_review_keeps_the_active_and_drops_the_rest(
    committed: Runtime, committed_client: httpx.AsyncClient, brand: Brand
) -> None:
    keeper = await make_member(committed, brand)
    light = await make_member(committed, brand)
    sleeper = await make_member(committed, brand)
    newcomer = await make_member(committed, brand)
    may_2025 = datetime(2025, 5, 10, tzinfo=UTC)
    for member in (keeper, light, sleeper):
        await order(committed, brand, member, 50_000, may_2025)
    q2 = datetime(2026, 4, 1, tzinfo=UTC)
    # In Q2 2026 the keeper orders 3 times (diamond: 3 orders a quarter), the light
    # member twice (2 x 1,000 yuan at diamond's 1.5x: 3,000 points, short of diamond's
    # 5,000 a year but platinum's 2 orders a quarter), the sleeper not at all.
    for day in (5, 20, 40):
        await order(committed, brand, keeper, 10, q2 + timedelta(days=day))
    for day in (5, 20):
        await order(committed, brand, light, 1_000, q2 + timedelta(days=day))
    # The newcomer reached diamond during Q2: not reviewed at the start of Q3.
    await order(committed, brand, newcomer, 60_000, datetime(2026, 6, 1, tzinfo=UTC))
    # 1 July 00:30 in Shanghai: the Q3 review looks back at Q2 and at the past year.
    july = datetime(2026, 7, 1, tzinfo=UTC) - SHANGHAI + timedelta(minutes=30)
    assert await review(committed, brand, july) == 2
    assert await review(committed, brand, july + timedelta(hours=5)) is None  # once a period
    changes = await rows(
        committed,
        "SELECT a.contact_id, c.from_tier, c.to_tier, c.details->>'orders_this_quarter',"
        " c.details->>'points_this_year' FROM points_tier_changes c"
        " JOIN points_accounts a ON a.id = c.account_id"
        " WHERE c.reason = 'retention_review' ORDER BY c.id",
    )
    assert sorted(changes) == sorted(
        [(light, "diamond", "platinum", "2", "3000"), (sleeper, "diamond", "bronze", "0", "0")]
    )
    tiers_now = {
        contact: tier
        for contact, tier in await rows(committed, "SELECT contact_id, tier FROM points_accounts")
    }
    assert tiers_now == {
        keeper: "diamond",
        light: "platinum",
        sleeper: "bronze",
        newcomer: "diamond",
    }
    reasons = await rows(
        committed,
        "SELECT payload->>'reason', payload->>'to' FROM outbox_events"
        " WHERE type = 'tier.changed' AND payload->>'reason' = 'retention_review'",
    )
    assert sorted(reasons) == [("retention_review", "bronze"), ("retention_review", "platinum")]
    status = await tier_of(committed_client, brand, sleeper)
    assert status["retention"]["required"] == {}
    keeper_status = await tier_of(committed_client, brand, keeper)
    assert keeper_status["retention"]["required"] == {
        "orders_per_quarter": 3,
        "points_per_year": 5000,
    }
