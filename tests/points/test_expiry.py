"""FIFO spending, expiry dates, the expiry run and its notices, `scrm points verify`."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from services.points.ledger import booking as ledger
from services.points.ledger import expiry, repository
from services.points.rules.service import add_months
from shared.db import unit_of_work
from shared.runtime import Runtime
from tests.helpers import run_scrm
from tests.points.support import Brand, balance, make_brand, make_member, redeem, rows, verify


@pytest.fixture
async def brand(committed: Runtime) -> Brand:
    return await make_brand(committed)


async def earn_at(
    runtime: Runtime, brand: Brand, member: uuid.UUID, points: int, earned: datetime
) -> None:
    async with unit_of_work(runtime.sessionmaker) as session:
        account = await repository.lock_account(session, brand.tenant_id, member)
        await ledger.earn(
            session,
            account,
            points,
            earned_at=earned,
            expires_at=add_months(earned, 24),
            source_key=f"test:{uuid.uuid4()}",
        )


def test_expiry_is_24_months_later_on_the_same_day_or_the_month_end() -> None:
    assert add_months(datetime(2026, 3, 15, 8, tzinfo=UTC), 24) == datetime(
        2028, 3, 15, 8, tzinfo=UTC
    )
    assert add_months(datetime(2026, 2, 28, tzinfo=UTC), 24) == datetime(2028, 2, 28, tzinfo=UTC)
    assert add_months(datetime(2028, 2, 29, tzinfo=UTC), 12) == datetime(2029, 2, 28, tzinfo=UTC)
    assert add_months(datetime(2026, 1, 31, tzinfo=UTC), 1) == datetime(2026, 2, 28, tzinfo=UTC)


async def test_spending_takes_the_oldest_lots_first(
    committed: Runtime, committed_client: httpx.AsyncClient, brand: Brand
) -> None:
    member = await make_member(committed, brand)
    now = datetime.now(UTC)
    for months_ago, points in ((3, 100), (12, 50), (1, 70)):
        await earn_at(committed, brand, member, points, now - timedelta(days=30 * months_ago))
    assert (await redeem(committed_client, brand, member, 120)).status_code == 201
    lots = await rows(committed, "SELECT points, remaining FROM points_lots ORDER BY earned_at")
    assert lots == [(50, 0), (100, 30), (70, 70)]
    assert await verify(committed, brand) == []


async def test_expired_lots_go_and_members_are_warned_once(
    committed: Runtime, committed_client: httpx.AsyncClient, brand: Brand
) -> None:
    alice, bob = await make_member(committed, brand), await make_member(committed, brand)
    now = datetime.now(UTC)
    # Alice: 40 points past expiry, 25 expiring in 10 days, 60 fresh.
    await earn_at(committed, brand, alice, 40, now - timedelta(days=731 + 5))
    await earn_at(committed, brand, alice, 25, add_months(now, -24) + timedelta(days=10))
    await earn_at(committed, brand, alice, 60, now)
    # Bob: 30 expiring in 20 days, in two lots earned the same hour.
    soon = add_months(now, -24) + timedelta(days=20)
    await earn_at(committed, brand, bob, 10, soon)
    await earn_at(committed, brand, bob, 20, soon)
    async with unit_of_work(committed.sessionmaker) as session:
        assert await expiry.expire_due(session) == 1
        assert await expiry.warn_expiring(session) == 2
    async with unit_of_work(committed.sessionmaker) as session:
        assert await expiry.expire_due(session) == 0
        assert await expiry.warn_expiring(session) == 0  # one notice per account and date
    assert await balance(committed_client, brand, alice) == 85
    notices = await rows(
        committed,
        "SELECT n.points, e.payload->>'points', e.payload->'channels'"
        " FROM points_expiry_notices n JOIN outbox_events e"
        " ON e.type = 'points.expiring' AND (e.payload->>'notice_id')::bigint = n.id"
        " ORDER BY n.points",
    )
    assert notices == [
        (25, "25", ["in_app", "sms", "wecom_template"]),
        (30, "30", ["in_app", "sms", "wecom_template"]),
    ]
    account = (
        await committed_client.get(f"/v1/points/accounts/{alice}", headers=brand.headers())
    ).json()
    assert account["expiring_soon_total"] == 25
    listed = (
        await committed_client.get("/v1/points/expiry-notices", headers=brand.headers())
    ).json()
    assert sorted(n["points"] for n in listed["items"]) == [25, 30]
    assert {n["contact_id"] for n in listed["items"]} == {str(alice), str(bob)}
    expired = await rows(committed, "SELECT kind, points FROM points_ledger WHERE kind = 'expire'")
    assert expired == [("expire", -40)]
    assert await verify(committed, brand) == []


async def test_points_past_expiry_cannot_be_spent_before_the_run(
    committed: Runtime, committed_client: httpx.AsyncClient, brand: Brand
) -> None:
    member = await make_member(committed, brand)
    await earn_at(committed, brand, member, 100, datetime.now(UTC) - timedelta(days=800))
    refused = await redeem(committed_client, brand, member, 50)
    assert refused.status_code == 409
    assert refused.json()["error"]["details"]["balance"] == 0
    assert await verify(committed, brand) == []


async def test_verify_command_finds_a_broken_account(
    committed: Runtime,
    committed_client: httpx.AsyncClient,
    brand: Brand,
    scrm_env: dict[str, str],
) -> None:
    member = await make_member(committed, brand)
    await earn_at(committed, brand, member, 100, datetime.now(UTC))
    ok = await run_scrm(scrm_env, "points", "verify", "--tenant", brand.slug)
    assert ok.returncode == 0, ok.stderr
    assert "every invariant holds" in ok.stdout
    async with committed.engine.begin() as conn:
        from sqlalchemy import text

        await conn.execute(text("UPDATE points_accounts SET balance = balance + 7"))
    broken = await run_scrm(scrm_env, "points", "verify", "--tenant", brand.slug)
    assert broken.returncode == 1
    assert "balance_vs_entries" in broken.stderr
    assert "balance_vs_lots" in broken.stderr


async def test_the_expiry_run_is_a_recurring_job_of_the_points_worker(
    committed: Runtime, committed_client: httpx.AsyncClient, brand: Brand
) -> None:
    import services.points.tasks  # noqa: F401  (registers the job)
    from shared.scheduler import ensure_recurring
    from tests.shared.bus_support import schedule_and_work

    member = await make_member(committed, brand)
    await earn_at(committed, brand, member, 40, datetime.now(UTC) - timedelta(days=800))
    async with unit_of_work(committed.sessionmaker) as session:
        assert await ensure_recurring(session) >= 1
    async with unit_of_work(committed.sessionmaker) as session:
        assert await ensure_recurring(session) == 0  # the next run exists once
    runs = await rows(
        committed,
        "SELECT due_at FROM scheduled_jobs WHERE service = 'points' AND job = 'expire_points'",
    )
    assert len(runs) == 1
    async with committed.engine.begin() as conn:
        from sqlalchemy import text

        await conn.execute(
            text("UPDATE scheduled_jobs SET due_at = now() WHERE job = 'expire_points'")
        )
        # Only this job: the other recurring jobs' next runs are up to a minute away
        # and would keep the burst worker waiting for them.
        await conn.execute(
            text("UPDATE scheduled_jobs SET status = 'cancelled' WHERE job <> 'expire_points'")
        )
    await schedule_and_work(committed, "points")
    assert await rows(
        committed, "SELECT kind, points FROM points_ledger WHERE kind = 'expire'"
    ) == [("expire", -40)]
    assert await balance(committed_client, brand, member) == 0
