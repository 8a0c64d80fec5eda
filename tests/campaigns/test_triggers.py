"""Triggers on the real bus: events published by the other services enrol their
contacts in the live journeys they trigger, once per event however often it is
delivered, only where the trigger's filters hold."""

from __future__ import annotations

import copy
import uuid
from typing import Any

import httpx
from sqlalchemy import text

from services.tagging.segments.models import Segment
from shared.db import unit_of_work
from shared.events import publish_many
from shared.relay import DELIVER_JOB
from shared.runtime import Runtime
from tests.campaigns.test_journeys_api import WELCOME
from tests.helpers import bearer, make_key, make_tenant
from tests.shared.bus_support import relay_all, work_until_idle


async def _journey(
    client: httpx.AsyncClient, h: dict[str, str], name: str, trigger: dict[str, Any], **more: Any
) -> int:
    journey = {**copy.deepcopy(WELCOME), "name": name, "trigger": trigger, **more}
    created = await client.post("/v1/campaigns", json=journey, headers=h)
    assert created.status_code == 201, created.text
    cid = int(created.json()["id"])
    assert (await client.post(f"/v1/campaigns/{cid}/launch", headers=h)).status_code == 200
    return cid


async def _publish(
    runtime: Runtime, tenant_id: uuid.UUID, events: list[tuple[str, dict[str, Any]]]
) -> list[int]:
    async with unit_of_work(runtime.sessionmaker) as session:
        await publish_many(session, [(t, p, tenant_id) for t, p in events])
    async with runtime.engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT id FROM outbox_events WHERE tenant_id = :t ORDER BY id"), {"t": tenant_id}
        )
        return [r[0] for r in rows][-len(events) :]


async def _enrolled(runtime: Runtime, cid: int) -> list[tuple[uuid.UUID, str]]:
    async with runtime.engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT contact_id, occurrence FROM campaign_enrolments WHERE campaign_id = :c "
                "ORDER BY id"
            ),
            {"c": cid},
        )
        return [(r[0], r[1]) for r in rows]


def _business(contact: uuid.UUID, **properties: Any) -> dict[str, Any]:
    return {
        "contact_id": str(contact),
        "event_id": uuid.uuid4().hex,
        "occurred_at": "2026-12-01T10:00:00+08:00",
        "properties": properties,
        "source": "event",
    }


async def test_trigger_events_enrol_their_contacts_once_where_the_filters_hold(
    committed: Runtime, committed_client: httpx.AsyncClient
) -> None:
    async with unit_of_work(committed.sessionmaker) as session:
        tenant = await make_tenant(session)
        h = bearer(await make_key(session, tenant, "operator"))
        other = await make_tenant(session)
        segment = Segment(tenant_id=tenant.id, name="vip", kind="static", status="ready")
        session.add(segment)
        await session.flush()
        seg = segment.id
    welcome = await _journey(
        committed_client, h, "welcome", {"type": "contact.added", "states": ["qr1"]}
    )
    tmall = await _journey(
        committed_client,
        h,
        "tmall buyers",
        {"type": "event", "event_type": "order.paid", "where": {"channel": "tmall"}},
        reentry={"policy": "every_time"},
    )
    vip = await _journey(committed_client, h, "vip", {"type": "segment.entered", "segment_id": seg})
    paused = await _journey(committed_client, h, "paused", {"type": "contact.added"})
    assert (
        await committed_client.post(f"/v1/campaigns/{paused}/pause", headers=h)
    ).status_code == 200
    a, b = uuid.uuid4(), uuid.uuid4()
    ids = await _publish(
        committed,
        tenant.id,
        [
            ("contact.added", {"contact_id": str(a), "state": "qr1", "staff_userid": "s1"}),
            ("contact.added", {"contact_id": str(b), "state": "other", "staff_userid": "s1"}),
            ("order.paid", _business(a, channel="tmall")),
            ("order.paid", _business(a, channel="jd")),
            ("order.paid", _business(b, channel="tmall")),
            ("order.paid", _business(a, channel="tmall")),
            ("segment.entered", {"contact_id": str(b), "segment_id": seg}),
            ("segment.entered", {"contact_id": str(a), "segment_id": seg + 1}),
        ],
    )
    # Another tenant's events never enrol this tenant's contacts.
    await _publish(committed, other.id, [("contact.added", {"contact_id": str(a), "state": "qr1"})])
    await relay_all(committed)
    # Every job delivered again, 7 more times (a relay that published over and over).
    queue = committed.queue_name("campaigns")
    for _ in range(7):
        await committed.redis.enqueue_job(DELIVER_JOB, ids, _queue_name=queue)
    await work_until_idle(committed, "campaigns")

    assert await _enrolled(committed, welcome) == [(a, "once")]
    assert await _enrolled(committed, tmall) == [
        (a, f"event:{ids[2]}"),
        (b, f"event:{ids[4]}"),
        (a, f"event:{ids[5]}"),
    ], "every_time: each tmall order an occurrence of its own, the jd one none"
    assert await _enrolled(committed, vip) == [(b, "once")]
    assert await _enrolled(committed, paused) == [], "a paused journey enrols nobody"


async def test_an_event_trigger_names_an_event_a_journey_can_start_on(
    committed_client: httpx.AsyncClient, committed: Runtime
) -> None:
    async with unit_of_work(committed.sessionmaker) as session:
        tenant = await make_tenant(session)
        h = bearer(await make_key(session, tenant, "operator"))
    journey = {
        **copy.deepcopy(WELCOME),
        "trigger": {"type": "event", "event_type": "group.created"},
    }
    refused = await committed_client.post("/v1/campaigns", json=journey, headers=h)
    assert refused.status_code == 422
    assert refused.json()["error"]["details"]["path"] == "trigger.event_type"
    journey["trigger"] = {"type": "event", "event_type": "custom.signed_up"}
    assert (
        await committed_client.post("/v1/campaigns", json=journey, headers=h)
    ).status_code == 201


async def test_events_from_before_a_journey_went_live_enrol_nobody_even_when_swept(
    committed: Runtime, committed_client: httpx.AsyncClient
) -> None:
    async with unit_of_work(committed.sessionmaker) as session:
        tenant = await make_tenant(session)
        h = bearer(await make_key(session, tenant, "operator"))
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    before = await _publish(
        committed, tenant.id, [("contact.added", {"contact_id": str(a), "staff_userid": "s1"})]
    )
    await relay_all(committed)
    await work_until_idle(committed, "campaigns")
    cid = await _journey(
        committed_client, h, "welcome", {"type": "contact.added"}, reentry={"policy": "every_time"}
    )
    added = {"contact_id": str(b), "staff_userid": "s1", "welcome_code": "W1", "state": "qr"}
    live = await _publish(committed, tenant.id, [("contact.added", added)])
    await relay_all(committed)
    await work_until_idle(committed, "campaigns")
    assert (await committed_client.post(f"/v1/campaigns/{cid}/pause", headers=h)).status_code == 200
    paused = await _publish(
        committed, tenant.id, [("contact.added", {"contact_id": str(c), "staff_userid": "s1"})]
    )
    await relay_all(committed)
    await work_until_idle(committed, "campaigns")
    assert (
        await committed_client.post(f"/v1/campaigns/{cid}/resume", headers=h)
    ).status_code == 200
    # The redelivery sweep, long after: the events from before the launch and from the
    # pause are still nothing to the journey.
    async with committed.engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE outbox_events SET published_at = now() - interval '1 hour' "
                "WHERE id = ANY(:ids)"
            ),
            {"ids": before + live + paused},
        )
    from shared.events import registry
    from shared.relay import OutboxRelay

    await OutboxRelay(committed, registry).redeliver_lost()
    await work_until_idle(committed, "campaigns")
    assert await _enrolled(committed, cid) == [(b, f"event:{live[0]}")]
    async with committed.engine.connect() as conn:
        context = await conn.scalar(
            text("SELECT context FROM campaign_enrolments WHERE campaign_id = :c"), {"c": cid}
        )
    assert context == {
        "event_id": live[0],
        "event_type": "contact.added",
        "welcome_code": "W1",
        "staff_userid": "s1",
        "state": "qr",
    }


async def test_tag_triggers_enrol_on_their_tag_only(
    committed: Runtime, committed_client: httpx.AsyncClient
) -> None:
    async with unit_of_work(committed.sessionmaker) as session:
        tenant = await make_tenant(session)
        h = bearer(await make_key(session, tenant, "operator"))
    group = await committed_client.post(
        "/v1/tag-groups", json={"name": "interest", "half_life_days": 30, "floor": 1}, headers=h
    )
    assert group.status_code == 201, group.text
    made = []
    for tag_name in ("tea", "wine"):
        tag = await committed_client.post(
            "/v1/tags", json={"group_id": group.json()["id"], "name": tag_name}, headers=h
        )
        assert tag.status_code == 201, tag.text
        made.append(tag.json()["id"])
    tea, wine = made
    added = await _journey(committed_client, h, "tea lovers", {"type": "tag.added", "tag_id": tea})
    removed = await _journey(
        committed_client, h, "tea quitters", {"type": "tag.removed", "tag_id": tea}
    )
    a, b = uuid.uuid4(), uuid.uuid4()
    tagged = {
        "group_id": 1,
        "weight": 1.0,
        "source": "rule",
        "occurred_at": "2026-12-01T10:00:00+08:00",
    }
    ids = await _publish(
        committed,
        tenant.id,
        [
            ("tag.added", {**tagged, "contact_id": str(a), "tag_id": tea}),
            ("tag.added", {**tagged, "contact_id": str(b), "tag_id": wine}),
            (
                "tag.removed",
                {
                    "contact_id": str(b),
                    "tag_id": tea,
                    "group_id": 1,
                    "reason": "decayed",
                    "occurred_at": "2026-12-01T10:00:00+08:00",
                },
            ),
        ],
    )
    await relay_all(committed)
    await work_until_idle(committed, "campaigns")
    assert await _enrolled(committed, added) == [(a, "once")]
    assert await _enrolled(committed, removed) == [(b, "once")]
    assert ids
