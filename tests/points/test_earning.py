"""Earning rules fed by events, through the real relay and points worker."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text

import services.points.tasks  # noqa: F401  (registers the handlers)
from shared.db import unit_of_work
from shared.events import publish
from shared.runtime import Runtime
from tests.points.support import Brand, balance, make_brand, make_member, rows, verify
from tests.shared.bus_support import relay_all, work_until_idle


@pytest.fixture
async def brand(committed: Runtime) -> Brand:
    return await make_brand(committed)


async def send(
    runtime: Runtime,
    brand: Brand,
    event_type: str,
    contact: uuid.UUID,
    *,
    at: datetime | None = None,
    event_id: str | None = None,
    **properties: Any,
) -> None:
    """An event as the users service publishes it, then processed by the points worker."""
    async with unit_of_work(runtime.sessionmaker) as session:
        await publish(
            session,
            event_type,
            {
                "contact_id": str(contact),
                "event_id": event_id or uuid.uuid4().hex,
                "occurred_at": (at or datetime.now(UTC)).isoformat(),
                "properties": properties,
                "source": "webhook",
            },
            tenant_id=brand.tenant_id,
        )
    await relay_all(runtime)
    await work_until_idle(runtime, "points")


async def configure(client: httpx.AsyncClient, brand: Brand, **rules: Any) -> None:
    response = await client.put("/v1/points/config", json=rules, headers=brand.headers("admin"))
    assert response.status_code == 200, response.text


async def test_checkin_once_per_local_day(
    committed: Runtime, committed_client: httpx.AsyncClient, brand: Brand
) -> None:
    member = await make_member(committed, brand)
    # 23:30 and 23:50 in Shanghai are one day; 00:10 the next (tenants default to it).
    evening = datetime(2026, 11, 20, 15, 30, tzinfo=UTC)
    for at in (evening, evening + timedelta(minutes=20), evening + timedelta(minutes=40)):
        await send(committed, brand, "checkin", member, at=at)
    assert await balance(committed_client, brand, member) == 10
    days = await rows(committed, "SELECT source_key FROM points_ledger ORDER BY id")
    assert [d[0].rsplit(":", 1)[1] for d in days] == ["2026-11-20", "2026-11-21"]


async def test_comments_stop_at_the_daily_cap(
    committed: Runtime, committed_client: httpx.AsyncClient, brand: Brand
) -> None:
    await configure(committed_client, brand, earning={"comment": {"points": 10, "daily_cap": 2}})
    member = await make_member(committed, brand)
    at = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)
    for minute in range(4):
        await send(committed, brand, "comment", member, at=at + timedelta(minutes=minute))
    assert await balance(committed_client, brand, member) == 20
    await send(committed, brand, "comment", member, at=at + timedelta(days=1))
    assert await balance(committed_client, brand, member) == 30


async def test_orders_earn_per_yuan_and_refunds_claw_back_in_proportion(
    committed: Runtime, committed_client: httpx.AsyncClient, brand: Brand
) -> None:
    member = await make_member(committed, brand)
    await send(committed, brand, "order.paid", member, order_id="SO-1", amount_fen=12_999)
    assert await balance(committed_client, brand, member) == 129  # whole yuan only
    # The same order paid twice (a replayed event with a new id) earns once.
    await send(committed, brand, "order.paid", member, order_id="SO-1", amount_fen=12_999)
    assert await balance(committed_client, brand, member) == 129
    await send(committed, brand, "order.refunded", member, order_id="SO-1", refund_fen=6_500)
    # 129 * 6500 / 12999 = 64.5 -> 64 taken back.
    assert await balance(committed_client, brand, member) == 65
    await send(committed, brand, "order.refunded", member, order_id="SO-1", refund_fen=6_499)
    assert await balance(committed_client, brand, member) == 0
    # More refunds than the order was worth take nothing more.
    await send(committed, brand, "order.refunded", member, order_id="SO-1", refund_fen=100)
    assert await balance(committed_client, brand, member) == 0
    assert await verify(committed, brand) == []


async def test_refund_after_spending_leaves_a_debt_that_earnings_settle(
    committed: Runtime, committed_client: httpx.AsyncClient, brand: Brand
) -> None:
    member = await make_member(committed, brand)
    await send(committed, brand, "order.paid", member, order_id="SO-2", amount_fen=50_000)
    spent = await committed_client.post(
        f"/v1/points/accounts/{member}/redemptions",
        json={"points": 450},
        headers=brand.headers(),
    )
    assert spent.status_code == 201
    await send(committed, brand, "order.refunded", member, order_id="SO-2", refund_fen=50_000)
    account = (
        await committed_client.get(f"/v1/points/accounts/{member}", headers=brand.headers())
    ).json()
    assert (account["balance"], account["debt"]) == (0, 450)
    await send(committed, brand, "order.paid", member, order_id="SO-3", amount_fen=30_000)
    account = (
        await committed_client.get(f"/v1/points/accounts/{member}", headers=brand.headers())
    ).json()
    assert (account["balance"], account["debt"]) == (0, 150)
    await send(committed, brand, "order.paid", member, order_id="SO-4", amount_fen=20_000)
    account = (
        await committed_client.get(f"/v1/points/accounts/{member}", headers=brand.headers())
    ).json()
    assert (account["balance"], account["debt"]) == (50, 0)
    assert await verify(committed, brand) == []


async def test_a_refund_before_its_payment_applies_once_it_earns(
    committed: Runtime, committed_client: httpx.AsyncClient, brand: Brand
) -> None:
    member = await make_member(committed, brand)
    await send(committed, brand, "order.refunded", member, order_id="SO-5", refund_fen=5_000)
    await send(committed, brand, "order.paid", member, order_id="SO-5", amount_fen=10_000)
    assert await balance(committed_client, brand, member) == 50


async def test_a_batch_of_payments_keeps_every_rule_of_one_by_one(
    committed: Runtime, committed_client: httpx.AsyncClient, brand: Brand
) -> None:
    member, other = await make_member(committed, brand), await make_member(committed, brand)
    merged, erased = await make_member(committed, brand), await make_member(committed, brand)
    async with unit_of_work(committed.sessionmaker) as session:
        await session.execute(
            text("UPDATE contacts SET merged_into_id = :s WHERE id = :c"),
            {"s": member, "c": merged},
        )
        await session.execute(
            text("UPDATE contacts SET erased_at = now() WHERE id = :c"), {"c": erased}
        )
    await send(committed, brand, "order.refunded", other, order_id="B-2", refund_fen=5_000)
    payments = [
        (member, "B-1", 10_000),
        (other, "B-2", 10_000),  # refunded by half before it was paid
        (merged, "B-3", 20_000),  # earns for the survivor
        (erased, "B-4", 30_000),  # earns nothing
        (member, "B-1", 10_000),  # the same order paid again earns once
        (other, "B-5", 40_000),
    ]
    async with unit_of_work(committed.sessionmaker) as session:
        for contact, order_id, amount in payments:
            await publish(
                session,
                "order.paid",
                {
                    "contact_id": str(contact),
                    "occurred_at": datetime.now(UTC).isoformat(),
                    "properties": {"order_id": order_id, "amount_fen": amount},
                },
                tenant_id=brand.tenant_id,
            )
    await relay_all(committed)
    await work_until_idle(committed, "points")
    assert await balance(committed_client, brand, member) == 100 + 200
    assert await balance(committed_client, brand, other) == 50 + 400
    assert (
        await rows(committed, "SELECT 1 FROM points_accounts WHERE contact_id = :c", c=erased) == []
    )
    assert await verify(committed, brand) == []


async def test_promotions_and_invites(
    committed: Runtime, committed_client: httpx.AsyncClient, brand: Brand
) -> None:
    start = datetime(2026, 11, 11, tzinfo=UTC)
    await configure(
        committed_client,
        brand,
        promotions=[
            {
                "name": "double 11",
                "multiplier": "2",
                "starts_at": start.isoformat(),
                "ends_at": (start + timedelta(days=1)).isoformat(),
                "rules": ["order_paid"],
            }
        ],
    )
    member = await make_member(committed, brand)
    at = start + timedelta(hours=3)
    await send(committed, brand, "order.paid", member, at=at, order_id="D1", amount_fen=10_000)
    await send(committed, brand, "checkin", member, at=at)
    assert await balance(committed_client, brand, member) == 200 + 5
    later = start + timedelta(days=2)
    await send(committed, brand, "order.paid", member, at=later, order_id="D2", amount_fen=10_000)
    assert await balance(committed_client, brand, member) == 305
    inviter = await make_member(committed, brand)
    async with unit_of_work(committed.sessionmaker) as session:
        await publish(
            session,
            "referral.succeeded",
            {"inviter_contact_id": str(inviter), "invitee_contact_id": str(member)},
            tenant_id=brand.tenant_id,
        )
    await relay_all(committed)
    await work_until_idle(committed, "points")
    assert await balance(committed_client, brand, inviter) == 200


async def test_bad_config_is_refused_whole(
    committed: Runtime, committed_client: httpx.AsyncClient, brand: Brand
) -> None:
    for bad in (
        {"earning": {"checkin": {"points": -1}}},
        {"earning": {"checkin": {"bonus": 1}}},
        {"expiry_months": 0},
        {
            "promotions": [
                {
                    "name": "x",
                    "multiplier": "2",
                    "starts_at": "2026-01-02T00:00:00Z",
                    "ends_at": "2026-01-01T00:00:00Z",
                }
            ]
        },
    ):
        response = await committed_client.put(
            "/v1/points/config", json=bad, headers=brand.headers("admin")
        )
        assert response.status_code == 422, bad
    operator = await committed_client.put(
        "/v1/points/config", json={}, headers=brand.headers("operator")
    )
    assert operator.status_code == 403
    current = await committed_client.get("/v1/points/config", headers=brand.headers())
    assert current.json()["earning"]["checkin"]["points"] == 5


async def test_the_largest_order_at_the_highest_rates_earns_the_most_one_entry_holds(
    committed: Runtime, committed_client: httpx.AsyncClient, brand: Brand
) -> None:
    """The most ingestion accepts (2^31 - 1 fen) at 1,000,000 points per ¥1 and a 10x
    promotion is far more than a ledger entry holds: it earns no more than MAX_POINTS
    (its base is capped so that the highest multiplier stays within it), and is neither
    refused by the database nor a dead letter."""
    from services.points.ledger.schemas import MAX_POINTS

    now = datetime.now(UTC)
    await configure(
        committed_client,
        brand,
        earning={"order_paid": {"points_per_yuan": 1_000_000}},
        promotions=[
            {
                "name": "tenfold",
                "multiplier": "10",
                "starts_at": (now - timedelta(days=1)).isoformat(),
                "ends_at": (now + timedelta(days=1)).isoformat(),
            }
        ],
    )
    member = await make_member(committed, brand)
    await send(committed, brand, "order.paid", member, order_id="SO-BIG", amount_fen=2**31 - 1)
    earned = await balance(committed_client, brand, member)
    assert MAX_POINTS // 2 < earned <= MAX_POINTS
    assert await rows(committed, "SELECT count(*) FROM dead_letters") == [(0,)]
    [(uncapped,)] = await rows(
        committed, "SELECT details->>'base_points_uncapped' FROM points_ledger"
    )
    assert int(uncapped) == (2**31 - 1) // 100 * 1_000_000
    assert await verify(committed, brand) == []
