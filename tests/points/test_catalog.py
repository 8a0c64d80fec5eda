"""The redemption catalog over HTTP: items, coupons, lottery draws, points + cash holds.

Concurrency rules are tested with real concurrent requests through committed
transactions; holds are spent by a real `order.paid` through the relay and the
points worker, and released by the release run (or its recurring job).
"""

from __future__ import annotations

import asyncio
import collections
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text

import services.points.tasks  # noqa: F401  (registers the handlers and jobs)
from services.points.catalog import holds
from services.points.catalog import service as catalog
from services.points.ledger.expiry import expire_due
from shared.db import unit_of_work
from shared.events import publish
from shared.runtime import Runtime
from shared.scheduler import schedule
from tests.points.support import Brand, adjust, balance, make_brand, make_member, rows, verify
from tests.shared.bus_support import relay_all, schedule_and_work, work_until_idle

LOTTERY_PRIZES = [
    {"name": "headphones", "weight": 2, "stock": 3},
    {"name": "mug", "weight": 5, "stock": 8},
    {"name": "thanks for playing", "weight": 6, "blank": True},
]


@pytest.fixture
async def brand(committed: Runtime) -> Brand:
    return await make_brand(committed)


async def create_item(client: httpx.AsyncClient, brand: Brand, **body: Any) -> dict[str, Any]:
    response = await client.post("/v1/points/items", json=body, headers=brand.headers("admin"))
    assert response.status_code == 201, response.text
    item: dict[str, Any] = response.json()
    return item


async def redeem_item(
    client: httpx.AsyncClient,
    brand: Brand,
    contact: uuid.UUID,
    item_id: str,
    *,
    key: str | None = None,
    role: str = "operator",
    **extra: Any,
) -> httpx.Response:
    return await client.post(
        f"/v1/points/accounts/{contact}/redemptions",
        json={"item_id": item_id, **extra},
        headers=brand.headers(role, key),
    )


async def funded_member(
    runtime: Runtime, client: httpx.AsyncClient, brand: Brand, points: int
) -> uuid.UUID:
    member = await make_member(runtime, brand, owner="staff-1")  # the brand's staff key
    credited = await adjust(client, brand, member, points)
    assert credited.status_code == 201, credited.text
    return member


async def get_item(client: httpx.AsyncClient, brand: Brand, item_id: str) -> dict[str, Any]:
    response = await client.get(f"/v1/points/items/{item_id}", headers=brand.headers("staff"))
    assert response.status_code == 200, response.text
    item: dict[str, Any] = response.json()
    return item


async def get_redemption(
    client: httpx.AsyncClient, brand: Brand, redemption_id: int
) -> dict[str, Any]:
    response = await client.get(
        f"/v1/points/redemptions/{redemption_id}", headers=brand.headers("analyst")
    )
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


async def send_paid(runtime: Runtime, brand: Brand, contact: uuid.UUID, **properties: Any) -> None:
    """An order.paid as the users service publishes it, processed by the points worker."""
    async with unit_of_work(runtime.sessionmaker) as session:
        await publish(
            session,
            "order.paid",
            {
                "contact_id": str(contact),
                "event_id": uuid.uuid4().hex,
                "occurred_at": datetime.now(UTC).isoformat(),
                "properties": properties,
                "source": "webhook",
            },
            tenant_id=brand.tenant_id,
        )
    await relay_all(runtime)
    await work_until_idle(runtime, "points")


async def release_at(runtime: Runtime, at: datetime) -> int:
    async with unit_of_work(runtime.sessionmaker) as session:
        return await holds.release_expired_holds(session, at)


# -- items ----------------------------------------------------------------------------


async def test_items_are_created_with_default_prices_listed_and_patched(
    committed: Runtime, committed_client: httpx.AsyncClient, brand: Brand
) -> None:
    coupon = await create_item(
        committed_client, brand, sku="CPN-5", kind="coupon", name="¥5 off", coupon_value_fen=500
    )
    assert coupon["points_cost"] == 250  # 50 points take ¥1 off
    assert (coupon["stock"], coupon["per_member_limit"], coupon["active"]) == (None, None, True)
    draw = await create_item(
        committed_client, brand, sku="DRAW", kind="lottery", name="draw", prizes=LOTTERY_PRIZES
    )
    assert draw["points_cost"] == 100
    assert [(p["position"], p["name"], p["stock"], p["blank"]) for p in draw["prizes"]] == [
        (1, "headphones", 3, False),
        (2, "mug", 8, False),
        (3, "thanks for playing", None, True),
    ]
    mixed = await create_item(
        committed_client,
        brand,
        sku="MUG-PC",
        kind="points_cash",
        name="mug, points + cash",
        points_cost=300,
        cash_fen=1990,
        stock=5,
        hold_minutes=15,
    )
    assert (mixed["cash_fen"], mixed["hold_minutes"]) == (1990, 15)
    # The exchange rate is the tenant's.
    config = await committed_client.put(
        "/v1/points/config", json={"points_per_yuan_off": 100}, headers=brand.headers("admin")
    )
    assert config.status_code == 200
    dearer = await create_item(
        committed_client, brand, sku="CPN-5b", kind="coupon", name="¥5 off", coupon_value_fen=500
    )
    assert dearer["points_cost"] == 500

    first = await committed_client.get("/v1/points/items?limit=2", headers=brand.headers("staff"))
    assert first.status_code == 200
    assert [i["sku"] for i in first.json()["items"]] == ["CPN-5", "CPN-5b"]
    rest = await committed_client.get(
        f"/v1/points/items?cursor={first.json()['next_cursor']}", headers=brand.headers("analyst")
    )
    assert [i["sku"] for i in rest.json()["items"]] == ["DRAW", "MUG-PC"]
    assert rest.json()["items"][0]["prizes"][0]["name"] == "headphones"
    assert rest.json()["next_cursor"] is None
    lotteries = await committed_client.get("/v1/points/items?kind=lottery", headers=brand.headers())
    assert [i["sku"] for i in lotteries.json()["items"]] == ["DRAW"]

    patched = await committed_client.patch(
        f"/v1/points/items/{mixed['id']}",
        json={"active": False, "stock": 12, "per_member_limit": 1},
        headers=brand.headers("admin"),
    )
    assert patched.status_code == 200, patched.text
    assert (patched.json()["active"], patched.json()["stock"]) == (False, 12)
    assert patched.json()["per_member_limit"] == 1
    unlimited = await committed_client.patch(
        f"/v1/points/items/{mixed['id']}", json={"stock": None}, headers=brand.headers("admin")
    )
    assert (unlimited.json()["stock"], unlimited.json()["per_member_limit"]) == (None, 1)
    inactive = await committed_client.get("/v1/points/items?active=false", headers=brand.headers())
    assert [i["sku"] for i in inactive.json()["items"]] == ["MUG-PC"]

    taken = await committed_client.post(
        "/v1/points/items",
        json={"sku": "CPN-5", "kind": "coupon", "name": "again", "coupon_value_fen": 100},
        headers=brand.headers("admin"),
    )
    assert taken.status_code == 409
    assert taken.json()["error"]["code"] == "sku_taken"
    # Only admins manage items; another tenant sees none of them.
    operator = await committed_client.post(
        "/v1/points/items",
        json={"sku": "X", "kind": "coupon", "name": "x", "coupon_value_fen": 100},
        headers=brand.headers("operator"),
    )
    assert operator.status_code == 403
    assert (
        await committed_client.patch(
            f"/v1/points/items/{coupon['id']}", json={"active": False}, headers=brand.headers()
        )
    ).status_code == 403
    other = await make_brand(committed)
    assert (
        await committed_client.get(f"/v1/points/items/{coupon['id']}", headers=other.headers())
    ).status_code == 404
    assert (await committed_client.get("/v1/points/items", headers=other.headers())).json()[
        "items"
    ] == []


@pytest.mark.parametrize(
    "body",
    [
        {"sku": "A", "kind": "coupon", "name": "no value"},
        {"sku": "A", "kind": "coupon", "name": "c", "coupon_value_fen": 0},
        {"sku": "A", "kind": "coupon", "name": "c", "coupon_value_fen": 100, "points_cost": 0},
        {"sku": "A", "kind": "coupon", "name": "c", "coupon_value_fen": 100, "stock": -1},
        {"sku": "A", "kind": "coupon", "name": "c", "coupon_value_fen": 100, "cash_fen": 5},
        {"sku": "A", "kind": "lottery", "name": "no prizes"},
        {"sku": "A", "kind": "lottery", "name": "l", "prizes": []},
        {"sku": "A", "kind": "lottery", "name": "l", "prizes": [{"name": "p", "weight": 0}]},
        {
            "sku": "A",
            "kind": "lottery",
            "name": "l",
            "prizes": [{"name": "p", "weight": 1, "stock": 2, "blank": True}],
        },
        {"sku": "A", "kind": "points_cash", "name": "pc", "points_cost": 10},
        {"sku": "A", "kind": "points_cash", "name": "pc", "points_cost": 10, "cash_fen": 0},
        {"sku": "A", "kind": "points_cash", "name": "pc", "cash_fen": 100},
        {"sku": "A", "kind": "voucher", "name": "v"},
        {"sku": "has space", "kind": "coupon", "name": "c", "coupon_value_fen": 100},
        {"sku": "A", "kind": "coupon", "name": "c", "coupon_value_fen": 100, "colour": "red"},
    ],
)
async def test_bad_items_are_refused_and_nothing_is_written(
    committed: Runtime, committed_client: httpx.AsyncClient, brand: Brand, body: dict[str, Any]
) -> None:
    response = await committed_client.post(
        "/v1/points/items", json=body, headers=brand.headers("admin")
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "validation_error"
    assert await rows(committed, "SELECT count(*) FROM points_items") == [(0,)]
    assert await rows(committed, "SELECT count(*) FROM points_lottery_prizes") == [(0,)]


async def test_bad_patches_are_refused(
    committed: Runtime, committed_client: httpx.AsyncClient, brand: Brand
) -> None:
    item = await create_item(
        committed_client, brand, sku="C", kind="coupon", name="c", coupon_value_fen=100
    )
    url = f"/v1/points/items/{item['id']}"
    for body in ({}, {"stock": -1}, {"active": None}, {"per_member_limit": 0}, {"kind": "x"}):
        response = await committed_client.patch(url, json=body, headers=brand.headers("admin"))
        assert response.status_code == 422, body
    missing = await committed_client.patch(
        f"/v1/points/items/{uuid.uuid4()}", json={"stock": 1}, headers=brand.headers("admin")
    )
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "item_not_found"
    assert (await get_item(committed_client, brand, item["id"]))["stock"] is None


# -- redeeming ------------------------------------------------------------------------


async def test_a_coupon_is_redeemed_for_its_points(
    committed: Runtime, committed_client: httpx.AsyncClient, brand: Brand
) -> None:
    item = await create_item(
        committed_client,
        brand,
        sku="C10",
        kind="coupon",
        name="¥10 off",
        coupon_value_fen=1000,
        stock=3,
    )
    member = await funded_member(committed, committed_client, brand, 1200)
    answer = await redeem_item(committed_client, brand, member, item["id"], role="staff")
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert (body["status"], body["kind"], body["points"], body["balance"]) == (
        "completed",
        "coupon",
        500,
        700,
    )
    assert body["item_id"] == item["id"]
    assert body["contact_id"] == str(member)
    # By sku too.
    by_sku = await redeem_item(committed_client, brand, member, "C10")
    assert by_sku.status_code == 201, by_sku.text
    assert by_sku.json()["balance"] == 200
    # Too few points: 409, and neither the stock nor the balance moved.
    refused = await redeem_item(committed_client, brand, member, item["id"])
    assert refused.status_code == 409
    assert refused.json()["error"] == {
        "code": "insufficient_points",
        "message": "500 points wanted, 200 available",
        "details": {"wanted": 500, "balance": 200},
    }
    assert (await get_item(committed_client, brand, item["id"]))["stock"] == 1
    assert await balance(committed_client, brand, member) == 200
    ledger = await rows(
        committed, "SELECT kind, points, details->>'sku' FROM points_ledger ORDER BY id"
    )
    assert ledger == [("adjustment", 1200, None), ("spend", -500, "C10"), ("spend", -500, "C10")]
    assert (await get_redemption(committed_client, brand, body["id"]))["balance"] == 200

    missing = await redeem_item(committed_client, brand, member, str(uuid.uuid4()))
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "item_not_found"
    await committed_client.patch(
        f"/v1/points/items/{item['id']}", json={"active": False}, headers=brand.headers("admin")
    )
    await adjust(committed_client, brand, member, 1000)
    inactive = await redeem_item(committed_client, brand, member, item["id"])
    assert inactive.status_code == 409
    assert inactive.json()["error"]["code"] == "item_inactive"
    other = await make_brand(committed)
    assert (await redeem_item(committed_client, other, member, item["id"])).status_code == 404
    assert await rows(committed, "SELECT count(*) FROM points_redemptions") == [(2,)]
    assert await verify(committed, brand) == []


async def test_stock_of_ten_among_a_hundred_members(
    committed: Runtime, committed_client: httpx.AsyncClient, brand: Brand
) -> None:
    item = await create_item(
        committed_client,
        brand,
        sku="HOT",
        kind="coupon",
        name="hot",
        coupon_value_fen=100,
        stock=10,
    )
    members = [await make_member(committed, brand) for _ in range(100)]
    credited = await asyncio.gather(*(adjust(committed_client, brand, m, 80) for m in members))
    assert {c.status_code for c in credited} == {201}
    answers = await asyncio.gather(
        *(redeem_item(committed_client, brand, m, item["id"]) for m in members)
    )
    statuses = collections.Counter(a.status_code for a in answers)
    assert statuses == {201: 10, 409: 90}
    assert {a.json()["error"]["code"] for a in answers if a.status_code == 409} == {"out_of_stock"}
    assert (await get_item(committed_client, brand, item["id"]))["stock"] == 0
    winners = {str(m) for m, a in zip(members, answers, strict=True) if a.status_code == 201}
    redeemed = await rows(committed, "SELECT contact_id::text FROM points_redemptions")
    assert {r[0] for r in redeemed} == winners
    assert await rows(
        committed, "SELECT count(*), sum(points) FROM points_ledger WHERE kind = 'spend'"
    ) == [(10, -500)]
    assert await verify(committed, brand) == []


async def test_the_per_member_limit_holds_under_concurrency(
    committed: Runtime, committed_client: httpx.AsyncClient, brand: Brand
) -> None:
    item = await create_item(
        committed_client,
        brand,
        sku="LIM",
        kind="coupon",
        name="two each",
        coupon_value_fen=100,
        per_member_limit=2,
    )
    rich = await funded_member(committed, committed_client, brand, 100_000)
    answers = await asyncio.gather(
        *(redeem_item(committed_client, brand, rich, item["id"]) for _ in range(20))
    )
    assert collections.Counter(a.status_code for a in answers) == {201: 2, 409: 18}
    assert {a.json()["error"]["code"] for a in answers if a.status_code == 409} == {"limit_reached"}
    assert await balance(committed_client, brand, rich) == 100_000 - 2 * 50
    # The limit is per member: someone else still may.
    other = await funded_member(committed, committed_client, brand, 50)
    assert (await redeem_item(committed_client, brand, other, item["id"])).status_code == 201
    assert await verify(committed, brand) == []


async def test_the_same_idempotency_key_redeems_once(
    committed: Runtime, committed_client: httpx.AsyncClient, brand: Brand
) -> None:
    item = await create_item(
        committed_client,
        brand,
        sku="IDEM",
        kind="coupon",
        name="c",
        coupon_value_fen=100,
        stock=100,
    )
    member = await funded_member(committed, committed_client, brand, 1000)
    first = await redeem_item(committed_client, brand, member, item["id"], key="r-1")
    again = await redeem_item(committed_client, brand, member, item["id"], key="r-1")
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    burst = await asyncio.gather(
        *(redeem_item(committed_client, brand, member, item["id"], key="r-2") for _ in range(20))
    )
    assert {a.status_code for a in burst} == {201}
    assert len({a.json()["id"] for a in burst}) == 1
    assert await rows(committed, "SELECT count(*) FROM points_redemptions") == [(2,)]
    assert (await get_item(committed_client, brand, item["id"]))["stock"] == 98
    assert await balance(committed_client, brand, member) == 900
    # The key is bound to its request: another item under it is refused.
    reused = await redeem_item(committed_client, brand, member, "OTHER", key="r-1")
    assert reused.status_code == 422
    assert reused.json()["error"]["code"] == "idempotency_key_reused"


# -- lottery --------------------------------------------------------------------------


def test_a_draw_is_a_function_of_its_seed_and_table() -> None:
    table = [
        {"id": 1, "name": "a", "weight": 1, "stock": 5, "blank": False},
        {"id": 2, "name": "b", "weight": 3, "stock": None, "blank": True},
    ]
    assert catalog.draw("abc", table) == catalog.draw("abc", list(table))
    won = collections.Counter(catalog.draw(f"seed-{i}", table).prize["id"] for i in range(4000))
    assert 850 < won[1] < 1150  # a quarter of the weight
    assert won[1] + won[2] == 4000
    only_b = catalog.draw("abc", table[1:])
    assert (only_b.prize["id"], only_b.total_weight) == (2, 3)
    with pytest.raises(ValueError, match="no prize"):
        catalog.draw("abc", [])


async def test_lottery_draws_respect_prize_stock_and_recompute_from_their_seed(
    committed: Runtime, committed_client: httpx.AsyncClient, brand: Brand
) -> None:
    item = await create_item(
        committed_client, brand, sku="SPIN", kind="lottery", name="spin", prizes=LOTTERY_PRIZES
    )
    prize_ids = {p["name"]: p["id"] for p in item["prizes"]}
    members = [await funded_member(committed, committed_client, brand, 2000) for _ in range(4)]
    answers = await asyncio.gather(
        *(redeem_item(committed_client, brand, members[i % 4], item["id"]) for i in range(80))
    )
    assert {a.status_code for a in answers} == {201}, [a.text for a in answers][:3]
    assert all(a.json()["seed"] and a.json()["prize"] for a in answers)
    after = await get_item(committed_client, brand, item["id"])
    left = {p["name"]: p["stock"] for p in after["prizes"]}
    assert left["headphones"] >= 0 and left["mug"] >= 0
    won = collections.Counter(a.json()["prize"]["name"] for a in answers)
    assert won["headphones"] == 3 - left["headphones"]
    assert won["mug"] == 8 - left["mug"]
    assert sum(won.values()) == 80
    # Each outcome was drawn from the table in play at its moment: replaying the draws
    # in order, stock by stock, gives each recorded table, and the seed its prize.
    stock = {p["id"]: p["stock"] for p in item["prizes"]}
    recorded = await rows(
        committed, "SELECT id, seed, prize_id, outcome FROM points_redemptions ORDER BY id"
    )
    for redemption_id, seed, prize_id, outcome in recorded:
        in_play = [
            (p["id"], p["stock"])
            for p in item["prizes"]
            if p["blank"] or stock[p["id"]] is None or stock[p["id"]] > 0
        ]
        assert [(line["id"], line["stock"]) for line in outcome["table"]] == [
            (i, stock[i]) for i, _ in in_play
        ]
        assert catalog.draw(seed, outcome["table"]).prize["id"] == prize_id
        if stock[prize_id] is not None:
            stock[prize_id] -= 1
        check = await committed_client.get(
            f"/v1/points/redemptions/{redemption_id}/verify", headers=brand.headers("analyst")
        )
        assert check.status_code == 200, check.text
        assert check.json()["matches"] is True
        assert check.json()["recomputed_prize_id"] == prize_id
    assert stock[prize_ids["headphones"]] == left["headphones"]
    assert [await balance(committed_client, brand, m) for m in members] == [0, 0, 0, 0]
    assert await verify(committed, brand) == []

    # A tampered seed no longer recomputes the recorded prize.
    first_id = recorded[0][0]
    async with committed.engine.begin() as conn:
        for attempt in range(100):
            await conn.execute(
                text("UPDATE points_redemptions SET seed = :s WHERE id = :id"),
                {"s": f"forged-{attempt}", "id": first_id},
            )
            forged = catalog.draw(f"forged-{attempt}", recorded[0][3]["table"])
            if forged.prize["id"] != recorded[0][2]:
                break
    check = await committed_client.get(
        f"/v1/points/redemptions/{first_id}/verify", headers=brand.headers()
    )
    assert check.json()["matches"] is False


async def test_a_draw_with_no_prize_left_is_out_of_stock(
    committed: Runtime, committed_client: httpx.AsyncClient, brand: Brand
) -> None:
    item = await create_item(
        committed_client,
        brand,
        sku="RARE",
        kind="lottery",
        name="rare",
        points_cost=10,
        prizes=[{"name": "gold bar", "weight": 1, "stock": 2}],
    )
    member = await funded_member(committed, committed_client, brand, 100)
    answers = [await redeem_item(committed_client, brand, member, item["id"]) for _ in range(3)]
    assert [a.status_code for a in answers] == [201, 201, 409]
    assert answers[2].json()["error"]["code"] == "out_of_stock"
    assert await balance(committed_client, brand, member) == 80  # the refused draw cost nothing
    coupon = await create_item(
        committed_client, brand, sku="C", kind="coupon", name="c", coupon_value_fen=100
    )
    plain = await redeem_item(committed_client, brand, member, coupon["id"])
    not_a_draw = await committed_client.get(
        f"/v1/points/redemptions/{plain.json()['id']}/verify", headers=brand.headers()
    )
    assert not_a_draw.status_code == 409
    assert not_a_draw.json()["error"]["code"] == "not_a_draw"


# -- points + cash --------------------------------------------------------------------


async def points_cash_item(client: httpx.AsyncClient, brand: Brand, **extra: Any) -> dict[str, Any]:
    return await create_item(
        client,
        brand,
        sku=f"PC-{uuid.uuid4().hex[:6]}",
        kind="points_cash",
        name="kettle, points + cash",
        points_cost=400,
        cash_fen=4990,
        hold_minutes=30,
        **extra,
    )


async def test_a_hold_is_spent_when_its_order_is_paid(
    committed: Runtime, committed_client: httpx.AsyncClient, brand: Brand
) -> None:
    item = await points_cash_item(committed_client, brand, stock=5)
    member = await funded_member(committed, committed_client, brand, 1000)
    started = datetime.now(UTC)
    held = await redeem_item(committed_client, brand, member, item["id"], order_id="SO-100")
    assert held.status_code == 201, held.text
    body = held.json()
    assert (body["status"], body["points"], body["cash_fen"], body["balance"]) == (
        "held",
        400,
        4990,
        600,
    )
    assert body["order_id"] == "SO-100"
    expires_at = datetime.fromisoformat(body["expires_at"])
    assert started + timedelta(minutes=29) < expires_at < started + timedelta(minutes=31)
    # Another shop order's payment changes nothing; this one's spends the hold.
    await send_paid(committed, brand, member, order_id="SO-999")
    assert (await get_redemption(committed_client, brand, body["id"]))["status"] == "held"
    await send_paid(committed, brand, member, order_id="SO-100", amount_fen=4990)
    spent = await get_redemption(committed_client, brand, body["id"])
    assert spent["status"] == "spent"
    assert spent["balance"] == 600 + 49  # the cash part earns as any order does
    # Spent is final: neither the release run nor an operator gives the points back.
    assert await release_at(committed, datetime.now(UTC) + timedelta(days=1)) == 0
    cancel = await committed_client.post(
        f"/v1/points/redemptions/{body['id']}/cancel", headers=brand.headers()
    )
    assert cancel.status_code == 409
    assert cancel.json()["error"]["code"] == "not_held"
    assert (await get_item(committed_client, brand, item["id"]))["stock"] == 4
    assert await verify(committed, brand) == []


async def test_an_expired_hold_is_released_and_its_points_come_back(
    committed: Runtime, committed_client: httpx.AsyncClient, brand: Brand
) -> None:
    item = await points_cash_item(committed_client, brand, stock=1, per_member_limit=1)
    member = await funded_member(committed, committed_client, brand, 1000)
    held = (await redeem_item(committed_client, brand, member, item["id"], order_id="SO-1")).json()
    assert (await get_item(committed_client, brand, item["id"]))["stock"] == 0
    # Not due yet: nothing happens.
    assert await release_at(committed, datetime.now(UTC)) == 0
    assert await release_at(committed, datetime.now(UTC) + timedelta(minutes=31)) == 1
    released = await get_redemption(committed_client, brand, held["id"])
    assert released["status"] == "released"
    assert released["balance"] == 1000
    assert released["reversal_entry_id"] is not None
    assert await rows(
        committed, "SELECT kind, points, balance_after FROM points_ledger ORDER BY id"
    ) == [("adjustment", 1000, 1000), ("spend", -400, 600), ("reversal", 400, 1000)]
    assert (await get_item(committed_client, brand, item["id"]))["stock"] == 1
    assert await verify(committed, brand) == []
    account = (
        await committed_client.get(f"/v1/points/accounts/{member}", headers=brand.headers())
    ).json()
    assert account["lifetime_spent"] == 0
    # A second run finds nothing; a late payment leaves it released.
    assert await release_at(committed, datetime.now(UTC) + timedelta(days=1)) == 0
    await send_paid(committed, brand, member, order_id="SO-1")
    assert (await get_redemption(committed_client, brand, held["id"]))["status"] == "released"
    # A released hold no longer counts towards the limit, and its unit is for sale again.
    again = await redeem_item(committed_client, brand, member, item["id"], order_id="SO-2")
    assert again.status_code == 201, again.text


async def test_the_recurring_job_releases_holds_past_their_time(
    committed: Runtime, committed_client: httpx.AsyncClient, brand: Brand
) -> None:
    item = await points_cash_item(committed_client, brand, stock=10)
    members = [await funded_member(committed, committed_client, brand, 500) for _ in range(3)]
    held = [
        (await redeem_item(committed_client, brand, m, item["id"], order_id=f"SO-{i}")).json()
        for i, m in enumerate(members)
    ]
    await send_paid(committed, brand, members[0], order_id="SO-0")
    async with committed.engine.begin() as conn:
        await conn.execute(
            text("UPDATE points_redemptions SET expires_at = now() - interval '1 minute'")
        )
    async with unit_of_work(committed.sessionmaker) as session:
        await schedule(
            session, service="points", job="release_expired_holds", due_at=datetime.now(UTC)
        )
    await schedule_and_work(committed, "points")
    statuses = [(await get_redemption(committed_client, brand, h["id"]))["status"] for h in held]
    assert statuses == ["spent", "released", "released"]
    assert [await balance(committed_client, brand, m) for m in members] == [100, 500, 500]
    assert (await get_item(committed_client, brand, item["id"]))["stock"] == 9
    assert await rows(
        committed, "SELECT status FROM scheduled_jobs WHERE job = 'release_expired_holds'"
    ) == [("done",)]
    assert await verify(committed, brand) == []


async def test_an_operator_cancels_a_hold(
    committed: Runtime, committed_client: httpx.AsyncClient, brand: Brand
) -> None:
    item = await points_cash_item(committed_client, brand, stock=2)
    member = await funded_member(committed, committed_client, brand, 800)
    held = (await redeem_item(committed_client, brand, member, item["id"], order_id="SO-7")).json()
    url = f"/v1/points/redemptions/{held['id']}/cancel"
    assert (await committed_client.post(url, headers=brand.headers("staff"))).status_code == 403
    other = await make_brand(committed)
    assert (await committed_client.post(url, headers=other.headers())).status_code == 404
    cancelled = await committed_client.post(url, headers=brand.headers(key="cancel-1"))
    assert cancelled.status_code == 200, cancelled.text
    assert (cancelled.json()["status"], cancelled.json()["balance"]) == ("released", 800)
    replayed = await committed_client.post(url, headers=brand.headers(key="cancel-1"))
    assert replayed.json() == cancelled.json()
    again = await committed_client.post(url, headers=brand.headers())
    assert again.status_code == 409
    assert again.json()["error"] == {
        "code": "not_held",
        "message": f"redemption {held['id']} is not held",
        "details": {"status": "released"},
    }
    assert (await get_item(committed_client, brand, item["id"]))["stock"] == 2
    assert await rows(committed, "SELECT count(*) FROM points_ledger WHERE kind = 'reversal'") == [
        (1,)
    ]
    assert await verify(committed, brand) == []


async def test_a_points_cash_redemption_needs_its_own_order(
    committed: Runtime, committed_client: httpx.AsyncClient, brand: Brand
) -> None:
    item = await points_cash_item(committed_client, brand, stock=5)
    coupon = await create_item(
        committed_client, brand, sku="C", kind="coupon", name="c", coupon_value_fen=100
    )
    member = await funded_member(committed, committed_client, brand, 2000)
    no_order = await redeem_item(committed_client, brand, member, item["id"])
    assert no_order.status_code == 422
    assert no_order.json()["error"]["details"]["field"] == "order_id"
    stray = await redeem_item(committed_client, brand, member, coupon["id"], order_id="SO-1")
    assert stray.status_code == 422
    assert (
        await redeem_item(committed_client, brand, member, item["id"], order_id="SO-1")
    ).status_code == 201
    twice = await redeem_item(committed_client, brand, member, item["id"], order_id="SO-1")
    assert twice.status_code == 409
    assert twice.json()["error"]["code"] == "order_already_held"
    assert await balance(committed_client, brand, member) == 1600
    assert (await get_item(committed_client, brand, item["id"]))["stock"] == 4
    assert await verify(committed, brand) == []


async def test_a_release_gives_back_only_points_that_have_not_expired(
    committed: Runtime, committed_client: httpx.AsyncClient, brand: Brand
) -> None:
    item = await points_cash_item(committed_client, brand)
    member = await make_member(committed, brand)
    await adjust(committed_client, brand, member, 300)  # the older lot, taken first
    await adjust(committed_client, brand, member, 300)
    held = (await redeem_item(committed_client, brand, member, item["id"], order_id="SO-1")).json()
    assert held["balance"] == 200  # 300 taken from the older lot, 100 from the newer
    # The newer lot expires while the points are held; the expiry run books it.
    async with committed.engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE points_lots SET expires_at = now() - interval '1 day'"
                " WHERE id = (SELECT max(id) FROM points_lots)"
            )
        )
    async with unit_of_work(committed.sessionmaker) as session:
        assert await expire_due(session) == 1
    assert await balance(committed_client, brand, member) == 0
    # The 100 it gave the hold expired with it; the 300 of the older lot come back.
    assert await release_at(committed, datetime.now(UTC) + timedelta(hours=1)) == 1
    assert await balance(committed_client, brand, member) == 300
    # Expiry keeps working on that account afterwards (an expired lot given points
    # back would be booked as expiring twice).
    async with unit_of_work(committed.sessionmaker) as session:
        assert await expire_due(session, datetime.now(UTC) + timedelta(days=3650)) == 1
    assert await balance(committed_client, brand, member) == 0
    assert await rows(
        committed,
        "SELECT kind, points, details->>'expired_while_held' FROM points_ledger"
        " WHERE kind IN ('reversal', 'expire') ORDER BY id",
    ) == [("expire", -200, None), ("reversal", 300, "100"), ("expire", -300, None)]
    assert await verify(committed, brand) == []


async def test_a_release_settles_a_clawback_debt_first(
    committed: Runtime, committed_client: httpx.AsyncClient, brand: Brand
) -> None:
    item = await points_cash_item(committed_client, brand)
    member = await make_member(committed, brand)
    await send_paid(committed, brand, member, order_id="SO-1", amount_fen=50_000)
    held = (await redeem_item(committed_client, brand, member, item["id"], order_id="SO-2")).json()
    assert held["balance"] == 100
    async with unit_of_work(committed.sessionmaker) as session:
        await publish(
            session,
            "order.refunded",
            {
                "contact_id": str(member),
                "event_id": uuid.uuid4().hex,
                "properties": {"order_id": "SO-1", "refund_fen": 50_000},
            },
            tenant_id=brand.tenant_id,
        )
    await relay_all(committed)
    await work_until_idle(committed, "points")
    account = (
        await committed_client.get(f"/v1/points/accounts/{member}", headers=brand.headers())
    ).json()
    assert (account["balance"], account["debt"]) == (0, 400)
    assert await release_at(committed, datetime.now(UTC) + timedelta(hours=1)) == 1
    account = (
        await committed_client.get(f"/v1/points/accounts/{member}", headers=brand.headers())
    ).json()
    assert (account["balance"], account["debt"]) == (0, 0)
    assert await rows(
        committed,
        "SELECT kind, points, debt_delta FROM points_ledger"
        " WHERE kind IN ('reversal', 'clawback') ORDER BY id",
    ) == [("clawback", -100, 400), ("reversal", 400, 0), ("clawback", -400, -400)]
    assert await verify(committed, brand) == []
