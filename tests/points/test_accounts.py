"""The points API over HTTP: balances, the ledger, adjustments, redemptions."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from shared.runtime import Runtime
from tests.points.support import (
    Brand,
    adjust,
    balance,
    make_brand,
    make_member,
    redeem,
    rows,
    verify,
)


@pytest.fixture
async def brand(committed: Runtime) -> Brand:
    return await make_brand(committed)


async def test_credit_spend_and_the_ledger(
    committed: Runtime, committed_client: httpx.AsyncClient, brand: Brand
) -> None:
    member = await make_member(committed, brand)
    assert await balance(committed_client, brand, member) == 0
    credited = await adjust(committed_client, brand, member, 300, reason="welcome gift")
    assert credited.status_code == 201, credited.text
    assert credited.json()["balance"] == 300
    spent = await redeem(committed_client, brand, member, 120)
    assert spent.status_code == 201, spent.text
    assert spent.json()["points"] == -120
    assert spent.json()["balance"] == 180
    account = (
        await committed_client.get(f"/v1/points/accounts/{member}", headers=brand.headers())
    ).json()
    assert account["balance"] == 180
    assert account["lifetime_spent"] == 120
    page = (
        await committed_client.get(
            f"/v1/points/accounts/{member}/ledger?limit=1", headers=brand.headers("analyst")
        )
    ).json()
    assert [e["kind"] for e in page["items"]] == ["spend"]
    rest = (
        await committed_client.get(
            f"/v1/points/accounts/{member}/ledger?cursor={page['next_cursor']}",
            headers=brand.headers(),
        )
    ).json()
    assert [(e["kind"], e["points"], e["balance_after"]) for e in rest["items"]] == [
        ("adjustment", 300, 300)
    ]
    assert rest["next_cursor"] is None
    assert await verify(committed, brand) == []


async def test_insufficient_points_change_nothing(
    committed: Runtime, committed_client: httpx.AsyncClient, brand: Brand
) -> None:
    member = await make_member(committed, brand)
    await adjust(committed_client, brand, member, 100)
    refused = await redeem(committed_client, brand, member, 101)
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "insufficient_points"
    assert refused.json()["error"]["details"] == {"wanted": 101, "balance": 100}
    debit = await adjust(committed_client, brand, member, -101)
    assert debit.status_code == 409
    assert await balance(committed_client, brand, member) == 100
    assert await rows(committed, "SELECT kind FROM points_ledger") == [("adjustment",)]


async def test_idempotency_key_replays_the_first_answer_status_included(
    committed: Runtime, committed_client: httpx.AsyncClient, brand: Brand
) -> None:
    member = await make_member(committed, brand)
    first = await adjust(committed_client, brand, member, 50, key="gift-1")
    again = await adjust(committed_client, brand, member, 50, key="gift-1")
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert await balance(committed_client, brand, member) == 50
    # A refusal is an answer too: after more points arrive, the retry is still refused.
    refused = await redeem(committed_client, brand, member, 80, key="spend-1")
    await adjust(committed_client, brand, member, 100)
    retried = await redeem(committed_client, brand, member, 80, key="spend-1")
    assert refused.status_code == retried.status_code == 409
    assert retried.json() == refused.json()
    assert await balance(committed_client, brand, member) == 150
    # Twenty identical requests at once book once.
    answers = await asyncio.gather(
        *(redeem(committed_client, brand, member, 10, key="spend-2") for _ in range(20))
    )
    assert {a.status_code for a in answers} == {201}
    assert len({a.json()["entry_id"] for a in answers}) == 1
    assert await balance(committed_client, brand, member) == 140
    assert await verify(committed, brand) == []


async def test_bad_input_and_roles(
    committed: Runtime, committed_client: httpx.AsyncClient, brand: Brand
) -> None:
    member = await make_member(committed, brand, owner="staff-1")
    url = f"/v1/points/accounts/{member}/adjustments"
    for body in ({"points": 0, "reason": "x"}, {"points": 1.5, "reason": "x"}, {"points": 5}):
        response = await committed_client.post(url, json=body, headers=brand.headers())
        assert response.status_code == 422, body
    assert (await redeem(committed_client, brand, member, -5)).status_code == 422
    analyst = await committed_client.post(
        url, json={"points": 5, "reason": "x"}, headers=brand.headers("analyst")
    )
    assert analyst.status_code == 403
    staff = await adjust(committed_client, brand, member, 5)
    assert staff.status_code == 201
    assert (await redeem(committed_client, brand, member, 5, role="staff")).status_code == 201
    other = await make_brand(committed)
    assert (await adjust(committed_client, other, member, 5)).status_code == 404
    assert (
        await committed_client.get(f"/v1/points/accounts/{member}", headers=other.headers())
    ).status_code == 404
    assert await rows(committed, "SELECT count(*) FROM points_ledger") == [(2,)]


async def test_two_hundred_simultaneous_redemptions(
    committed: Runtime, committed_client: httpx.AsyncClient, brand: Brand
) -> None:
    member = await make_member(committed, brand)
    await adjust(committed_client, brand, member, 37 * 50)
    answers = await asyncio.gather(
        *(redeem(committed_client, brand, member, 50) for _ in range(200))
    )
    statuses = [a.status_code for a in answers]
    assert statuses.count(201) == 37
    assert statuses.count(409) == 163
    assert {a.json()["error"]["code"] for a in answers if a.status_code == 409} == {
        "insufficient_points"
    }
    assert await balance(committed_client, brand, member) == 0
    assert await verify(committed, brand) == []


async def test_the_ledger_refuses_edits(
    committed: Runtime, committed_client: httpx.AsyncClient, brand: Brand
) -> None:
    member = await make_member(committed, brand)
    await adjust(committed_client, brand, member, 10)
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    for statement in ("UPDATE points_ledger SET points = 1000", "DELETE FROM points_ledger"):
        with pytest.raises(DBAPIError, match="append-only"):
            async with committed.engine.begin() as conn:
                await conn.execute(text(statement))
