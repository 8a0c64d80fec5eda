"""Benefits with quotas under concurrency, the monthly usage report, health and alerts."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from services.points.health import service as health
from services.points.ledger import booking as ledger
from services.points.ledger import repository
from services.points.rules.service import add_months
from shared.db import unit_of_work
from shared.runtime import Runtime
from tests.points.support import AlertReceiver, Brand, make_brand, make_member, redeem, rows


@pytest.fixture
async def brand(committed: Runtime) -> Brand:
    return await make_brand(committed)


async def claim(
    client: httpx.AsyncClient, brand: Brand, member: uuid.UUID, code: str, key: str | None = None
) -> httpx.Response:
    return await client.post(
        f"/v1/points/accounts/{member}/benefits/{code}/claims",
        headers=brand.headers("operator", key),
    )


async def make_tier(runtime: Runtime, brand: Brand, member: uuid.UUID, tier: str) -> None:
    async with unit_of_work(runtime.sessionmaker) as session:
        account = await repository.lock_account(session, brand.tenant_id, member)
        from sqlalchemy import text

        await session.execute(
            text("UPDATE points_accounts SET tier = :tier, tier_since = now() WHERE id = :a"),
            {"tier": tier, "a": account.id},
        )


async def test_free_shipping_twice_a_month_per_member_even_when_clicked_at_once(
    committed: Runtime, committed_client: httpx.AsyncClient, brand: Brand
) -> None:
    member = await make_member(committed, brand)
    answers = await asyncio.gather(
        *(claim(committed_client, brand, member, "free_shipping") for _ in range(20))
    )
    statuses = sorted(a.status_code for a in answers)
    assert statuses.count(201) == 2
    assert {a.json()["error"]["code"] for a in answers if a.status_code == 409} == {
        "member_quota_reached"
    }
    assert await rows(committed, "SELECT count(*) FROM points_benefit_claims") == [(2,)]
    # The same request retried with its Idempotency-Key is not a third claim.
    other = await make_member(committed, brand)
    first = await claim(committed_client, brand, other, "free_shipping", key="ship-1")
    again = await claim(committed_client, brand, other, "free_shipping", key="ship-1")
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    assert first.json()["member_remaining"] == 1


async def test_a_scarce_benefit_never_goes_past_its_weekly_quota(
    committed: Runtime, committed_client: httpx.AsyncClient, brand: Brand
) -> None:
    put = await committed_client.put(
        "/v1/points/benefits/new_product_trial",
        json={
            "code": "new_product_trial",
            "name": "Trial",
            "tiers": ["diamond"],
            "member_quota": 1,
            "member_period": "month",
            "total_quota": 7,
            "total_period": "week",
        },
        headers=brand.headers("admin"),
    )
    assert put.status_code == 200, put.text
    members = [await make_member(committed, brand) for _ in range(30)]
    for member in members[:25]:
        await make_tier(committed, brand, member, "diamond")
    answers = await asyncio.gather(
        *(claim(committed_client, brand, m, "new_product_trial") for m in members)
    )
    codes = [a.json()["error"]["code"] if a.status_code == 409 else a.status_code for a in answers]
    assert codes.count(201) == 7
    assert codes[25:] == ["not_eligible"] * 5  # bronze members
    assert set(codes[:25]) == {201, "quota_exhausted"}
    used = await rows(committed, "SELECT used FROM points_benefit_usage")
    assert used == [(7,)]
    report = (
        await committed_client.get("/v1/points/benefits/report", headers=brand.headers("analyst"))
    ).json()
    trial = next(b for b in report["benefits"] if b["code"] == "new_product_trial")
    assert (trial["claims"], trial["eligible_members"], trial["underused"]) == (7, 25, False)
    shipping = next(b for b in report["benefits"] if b["code"] == "free_shipping")
    assert (shipping["claims"], shipping["eligible_members"], shipping["underused"]) == (
        0,
        25,
        True,
    )


async def test_bad_benefits_are_refused(
    committed: Runtime, committed_client: httpx.AsyncClient, brand: Brand
) -> None:
    for body in (
        {"code": "x", "name": "x", "tiers": ["emerald"]},
        {"code": "x", "name": "x", "member_quota": 0},
        {"code": "x", "name": "x", "member_period": "fortnight"},
        {"code": "y", "name": "x"},
    ):
        response = await committed_client.put(
            "/v1/points/benefits/x", json=body, headers=brand.headers("admin")
        )
        assert response.status_code == 422, body
    member = await make_member(committed, brand)
    assert (await claim(committed_client, brand, member, "nope")).status_code == 404


async def test_weekly_health_and_an_inflation_alert_posted_once(
    committed: Runtime,
    committed_client: httpx.AsyncClient,
    brand: Brand,
    receiver: tuple[AlertReceiver, str],
) -> None:
    hook, url = receiver
    put = await committed_client.put(
        "/v1/points/config", json={"alert_webhook_url": url}, headers=brand.headers("admin")
    )
    assert put.status_code == 200, put.text
    member = await make_member(committed, brand)
    async with unit_of_work(committed.sessionmaker) as session:
        account = await repository.lock_account(session, brand.tenant_id, member)
        await ledger.earn(
            session,
            account,
            1000,
            expires_at=add_months(datetime.now(UTC), 24),
            source_key="health-1",
        )
    assert (await redeem(committed_client, brand, member, 500)).status_code == 201
    # This week: earned 1000, spent 500 -> 0.5 < 0.7. Checked next week, it alerts.
    next_week = datetime.now(UTC) + timedelta(days=7)
    hook.fail = True
    async with httpx.AsyncClient() as client:
        async with unit_of_work(committed.sessionmaker) as session:
            assert await health.check_last_week(session, brand.tenant_id, next_week) is not None
            assert await health.deliver_pending(session, brand.tenant_id, client) == 0
        hook.fail = False
        async with unit_of_work(committed.sessionmaker) as session:
            assert await health.check_last_week(session, brand.tenant_id, next_week) is None
            assert await health.deliver_pending(session, brand.tenant_id, client) == 1
        async with unit_of_work(committed.sessionmaker) as session:
            assert await health.deliver_pending(session, brand.tenant_id, client) == 0
    assert len(hook.bodies) == 1
    assert hook.bodies[0]["earned"] == 1000
    assert hook.bodies[0]["spent"] == 500
    assert hook.bodies[0]["spent_to_earned"] == 0.5
    report = (
        await committed_client.get("/v1/points/health?weeks=2", headers=brand.headers())
    ).json()
    assert report["outstanding_points"] == 500
    assert report["annual_inflation"] is None  # nothing was outstanding a year ago
    alerts = (
        await committed_client.get("/v1/points/health/alerts", headers=brand.headers())
    ).json()
    assert len(alerts) == 1
    assert alerts[0]["delivered_at"] is not None


@pytest.mark.parametrize("state", ["erased", "merged"])
async def test_an_erased_or_merged_contact_claims_nothing(
    committed: Runtime, committed_client: httpx.AsyncClient, brand: Brand, state: str
) -> None:
    member = await make_member(committed, brand)
    survivor = await make_member(committed, brand)
    async with unit_of_work(committed.sessionmaker) as session:
        from sqlalchemy import text

        change = "erased_at = now()" if state == "erased" else "merged_into_id = :survivor"
        await session.execute(
            text(f"UPDATE contacts SET {change} WHERE id = :id"),
            {"id": member, "survivor": survivor},
        )
    answer = await claim(committed_client, brand, member, "free_shipping")
    assert answer.status_code == 404, answer.text
    assert answer.json()["error"]["code"] == "contact_not_found"
    assert await rows(committed, "SELECT count(*) FROM points_benefit_claims") == [(0,)]
    assert await rows(committed, "SELECT count(*) FROM points_benefit_usage") == [(0,)]
    assert (await claim(committed_client, brand, survivor, "free_shipping")).status_code == 201
