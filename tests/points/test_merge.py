"""Points follow the survivor when two contacts are merged."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from services.points.ledger import booking as ledger
from services.points.ledger import merge, repository
from shared.db import unit_of_work
from shared.events import publish
from shared.runtime import Runtime
from tests.points.support import Brand, balance, make_brand, make_member, rows, verify
from tests.shared.bus_support import relay_all, work_until_idle


@pytest.fixture
async def brand(committed: Runtime) -> Brand:
    return await make_brand(committed)


async def earn(
    runtime: Runtime, brand: Brand, member: uuid.UUID, points: int, expires: datetime
) -> None:
    async with unit_of_work(runtime.sessionmaker) as session:
        account = await repository.lock_account(session, brand.tenant_id, member)
        await ledger.earn(
            session, account, points, expires_at=expires, source_key=f"t:{uuid.uuid4()}"
        )


async def test_lots_debt_and_tier_move_to_the_survivor_once(
    committed: Runtime, committed_client: httpx.AsyncClient, brand: Brand
) -> None:
    assert merge.on_contact_merged  # the handler module is loaded with the tasks
    survivor, merged = await make_member(committed, brand), await make_member(committed, brand)
    soon, later = datetime.now(UTC) + timedelta(days=40), datetime.now(UTC) + timedelta(days=400)
    await earn(committed, brand, survivor, 100, later)
    await earn(committed, brand, merged, 30, soon)
    await earn(committed, brand, merged, 20, later)
    async with unit_of_work(committed.sessionmaker) as session:
        await session.execute(
            __import__("sqlalchemy").text(
                "UPDATE points_accounts SET tier = 'gold', tier_since = now() WHERE contact_id = :c"
            ),
            {"c": merged},
        )
    for _ in range(2):  # the event delivered twice moves the points once
        async with unit_of_work(committed.sessionmaker) as session:
            await publish(
                session,
                "contact.merged",
                {"survivor_id": str(survivor), "merged_id": str(merged), "reason": "phone"},
                tenant_id=brand.tenant_id,
            )
        await relay_all(committed)
        await work_until_idle(committed, "points")
    assert await balance(committed_client, brand, survivor) == 150
    assert await balance(committed_client, brand, merged) == 0
    lots = await rows(
        committed,
        "SELECT l.remaining, l.expires_at::date FROM points_lots l"
        " JOIN points_accounts a ON a.id = l.account_id"
        " WHERE a.contact_id = :c AND l.remaining > 0 ORDER BY l.expires_at, l.remaining",
        c=survivor,
    )
    assert lots == [(30, soon.date()), (20, later.date()), (100, later.date())]
    tier = await rows(
        committed, "SELECT tier FROM points_accounts WHERE contact_id = :c", c=survivor
    )
    assert tier == [("gold",)]
    assert await verify(committed, brand) == []


async def test_a_debt_follows_the_survivor(
    committed: Runtime, committed_client: httpx.AsyncClient, brand: Brand
) -> None:
    survivor, merged = await make_member(committed, brand), await make_member(committed, brand)
    await earn(committed, brand, survivor, 30, datetime.now(UTC) + timedelta(days=400))
    async with unit_of_work(committed.sessionmaker) as session:
        account = await repository.lock_account(session, brand.tenant_id, merged)
        await ledger.clawback(session, account, 50, source_key="refund-x", reason="refund")
    async with unit_of_work(committed.sessionmaker) as session:
        assert await merge.follow_merge(session, brand.tenant_id, survivor, merged) == 0
    debts = await rows(
        committed,
        "SELECT contact_id, balance, debt FROM points_accounts ORDER BY balance DESC, debt",
    )
    assert sorted(debts) == sorted([(survivor, 0, 20), (merged, 0, 0)])
    assert await verify(committed, brand) == []
