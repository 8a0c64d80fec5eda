"""What ingest accepts can be applied: everything checkable is checked on the way in,
per event, and what an earlier version stored unchecked is a dead letter at once."""

from __future__ import annotations

import copy
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from services.users.consumer import InboundConsumer
from services.users.event_types import MAX_FEN
from services.users.ingest import Inbound, InboundWriter
from shared.db import unit_of_work
from shared.models import Tenant
from shared.runtime import Runtime
from tests.helpers import bearer, make_key
from tests.shared.bus_support import relay_all, work_until_idle
from tests.users.support import WeComTenant, post, process_all, wecom_tenant


@pytest.fixture
async def corp(committed: Runtime) -> WeComTenant:
    return await wecom_tenant(committed)


def order(event_id: str, **properties: Any) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "type": "order.paid",
        "occurred_at": "2026-11-20T10:00:00+08:00",
        "contact": {"phone": "13812341234"},
        "properties": {"order_id": f"SO-{event_id}", "amount_fen": 100, **properties},
    }


def refund(event_id: str, refund_fen: Any) -> dict[str, Any]:
    return {
        **order(event_id),
        "type": "order.refunded",
        "properties": {"order_id": "SO-ok-max", "refund_fen": refund_fen},
    }


def with_(event: dict[str, Any], **fields: Any) -> dict[str, Any]:
    changed = copy.deepcopy(event)
    changed.update(fields)
    return changed


# (event, where its error is) for events that used to be accepted and die in a worker.
BAD = [
    (order("big", amount_fen=2**63 - 1), "properties.amount_fen"),
    (order("huge", amount_fen=2**80), "properties.amount_fen"),
    (order("over", amount_fen=MAX_FEN + 1), "properties.amount_fen"),
    (order("negative", amount_fen=-1), "properties.amount_fen"),
    (order("text", amount_fen="100"), "properties.amount_fen"),
    (order("flag", amount_fen=True), "properties.amount_fen"),
    (refund("refund-big", 2**63 - 1), "properties.refund_fen"),
    (order("long-id", order_id="S" * 129), "properties.order_id"),
    (order("nul", note="a\x00b"), "U+0000"),
    (with_(order("phone"), contact={"phone": "not-a-phone"}), "contact.phone"),
    (with_(order("short"), contact={"phone": "12345"}), "contact.phone"),
    (with_(order("email"), contact={"email": "no-at-sign"}), "contact.email"),
    (with_(order("blank"), contact={"unionid": "   "}), "contact"),
    (with_(order("ancient"), occurred_at="0001-01-01T00:00:00+14:00"), "occurred_at"),
    (
        with_(order("channel"), type="consent.opt_out", properties={"channel": "carrier-pigeon"}),
        "properties.channel",
    ),
    (
        with_(order("qty"), type="cart.add", properties={"product_id": "P1", "quantity": 0}),
        "properties.quantity",
    ),
]
GOOD = [
    order("ok-max", amount_fen=MAX_FEN),
    refund("ok-refund", MAX_FEN),
    order("ok-extra", channel="live", items=[{"sku": "A", "qty": 2}]),
    with_(order("ok-custom"), type="custom.anything", properties={"x": [1, {"y": None}]}),
    with_(order("ok-phone"), contact={"phone": "+86 138-1234-1234"}),
]


def located(rejection: dict[str, Any]) -> str:
    return " ".join(
        ".".join(error["loc"]) + " " + error["message"] for error in rejection["errors"]
    )


async def operator_key(runtime: Runtime, corp: WeComTenant) -> str:
    async with unit_of_work(runtime.sessionmaker) as session:
        return await make_key(session, await session.get(Tenant, corp.tenant_id), "operator")


async def scalar(runtime: Runtime, sql: str) -> Any:
    async with runtime.engine.connect() as conn:
        return (await conn.execute(text(sql))).scalar()


@pytest.mark.parametrize("route", ["webhook", "api"])
async def test_events_a_worker_could_not_apply_are_refused_with_their_index(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant, route: str
) -> None:
    events = [event for event, _ in BAD] + GOOD
    if route == "webhook":
        response = await post(committed_client, corp.signed({"events": events}))
    else:
        response = await committed_client.post(
            "/v1/events",
            json={"events": events},
            headers=bearer(await operator_key(committed, corp)),
        )
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["accepted"] == len(GOOD)
    rejected = body["rejected"]
    assert [(r["index"], r["event_id"]) for r in rejected] == [
        (index, event["event_id"]) for index, (event, _) in enumerate(BAD)
    ]
    for rejection, (_, where) in zip(rejected, BAD, strict=True):
        assert where in located(rejection), rejection

    # What was accepted goes all the way through, the points of the largest order too.
    await process_all(committed)
    await relay_all(committed)
    await work_until_idle(committed, "points")
    assert await scalar(committed, "SELECT count(*) FROM dead_letters") == 0
    assert (
        await scalar(committed, "SELECT count(*) FROM inbound_events WHERE outcome = 'dead'") == 0
    )
    earned = await scalar(
        committed, "SELECT sum(points) FROM points_ledger WHERE order_id = 'SO-ok-max'"
    )
    assert earned == 0, "the full refund took back the largest order's points"
    booked = await scalar(
        committed,
        "SELECT points FROM points_ledger WHERE order_id = 'SO-ok-max' AND kind = 'earn'",
    )
    assert booked == MAX_FEN // 100


async def test_a_batch_of_only_invalid_events_is_refused_whole(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant
) -> None:
    response = await post(committed_client, corp.signed({"events": [BAD[0][0], BAD[9][0]]}))
    assert response.status_code == 422
    details = response.json()["error"]["details"]
    assert [d["index"] for d in details] == [0, 1]
    assert await scalar(committed, "SELECT count(*) FROM inbound_events") == 0


async def test_an_event_stored_unchecked_by_an_earlier_version_is_a_dead_letter_at_once(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant
) -> None:
    stale = {
        "old-amount": order("old-amount", amount_fen=2**63 - 1),
        "old-phone": with_(order("old-phone"), contact={"phone": "139-0000-000"}),
        "old-nul": order("old-nul", note="a\x00b"),
    }
    writer = InboundWriter(committed)
    try:
        stored = await writer.store(
            [
                Inbound(corp.tenant_id, "event", key, event["type"], {**event, "via": "webhook"})
                for key, event in stale.items()
            ]
        )
    finally:
        await writer.close()
    assert stored == [True] * len(stale)
    consumer = InboundConsumer(committed)
    assert await consumer.drain() == len(stale)
    assert await consumer.drain() == 0, "never retried"
    listed = (await committed_client.get("/v1/admin/dlq", headers=bearer(corp.admin))).json()
    letters = {letter["about"]["event_id"]: letter for letter in listed["items"]}
    assert sorted(letters) == sorted(stale)
    assert all(letter["attempts"] == 1 for letter in letters.values())
    assert "properties.amount_fen" in letters["old-amount"]["last_error"]
    assert "contact.phone: invalid phone" in letters["old-phone"]["last_error"]
    assert "139-0000-000" not in letters["old-phone"]["last_error"], "no personal data in clear"
    assert "U+0000" in letters["old-nul"]["last_error"]
    assert await scalar(committed, "SELECT count(*) FROM contact_events") == 0
