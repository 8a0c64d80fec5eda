"""The journeys API over HTTP: saving journeys (bad ones refused with the failing path
and nothing saved), versions, status changes, roles and tenants."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.campaigns import clock
from services.tagging.segments.models import Segment
from shared.models import Tenant
from tests.helpers import bearer, make_key, make_tenant
from tests.tagging.test_segments_support import make_tags

NOW = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)

WELCOME: dict[str, Any] = {
    "name": "welcome",
    "trigger": {"type": "contact.added"},
    "steps": [
        {
            "id": "s1",
            "type": "action",
            "action": "send",
            "channel": "wecom_welcome",
            "content": {"text": "欢迎 {{name}}"},
            "next": "s2",
        },
        {"id": "s2", "type": "wait", "seconds": 30, "next": "s3"},
        {
            "id": "s3",
            "type": "action",
            "action": "send",
            "channel": "wecom_single",
            "content": {"text": "..."},
        },
    ],
}


class Brand:
    def __init__(self, tenant: Tenant, keys: dict[str, str], tags: list[int], segment: int):
        self.tenant = tenant
        self.keys = keys
        self.tags = tags
        self.segment = segment

    def h(self, role: str = "operator") -> dict[str, str]:
        return bearer(self.keys[role])


@pytest.fixture
def moving_clock() -> Any:
    now = [NOW]
    with clock.use(lambda: now[0]):
        yield now


@pytest.fixture
async def brand(session: AsyncSession) -> Brand:
    tenant = await make_tenant(session)
    keys = {
        r: await make_key(session, tenant, r) for r in ("admin", "operator", "analyst", "staff")
    }
    tags = await make_tags(session, tenant.id, 2)
    segment = Segment(tenant_id=tenant.id, name="buyers", rule={"event": "order.paid"})
    session.add(segment)
    await session.flush()
    return Brand(tenant, keys, tags, segment.id)


async def _count(session: AsyncSession, table: str) -> int:
    return int(await session.scalar(text(f"SELECT count(*) FROM {table}")) or 0)


async def test_a_journey_from_draft_to_stopped_with_its_versions(
    client: httpx.AsyncClient, brand: Brand, moving_clock: list[datetime]
) -> None:
    created = await client.post("/v1/campaigns", json=WELCOME, headers=brand.h())
    assert created.status_code == 201, created.text
    body = created.json()
    assert body == {"id": body["id"], "version": 1, "status": "draft"}
    cid = body["id"]

    shown = (await client.get(f"/v1/campaigns/{cid}", headers=brand.h("analyst"))).json()
    assert shown["status"] == "draft" and shown["version"] == 1
    assert shown["trigger"] == {"type": "contact.added"}
    assert [s["id"] for s in shown["steps"]] == ["s1", "s2", "s3"]
    assert shown["steps"][0]["over_quota"] == "skip", "defaults are filled in"
    assert shown["reentry"] == {"policy": "once"} and shown["goals"] == []
    assert (shown["when_lost"], shown["when_opted_out"]) == ("exit", "skip")
    assert [v["version"] for v in shown["versions"]] == [1]

    # A draft is edited in place.
    edited = copy.deepcopy(WELCOME)
    edited["steps"][1]["seconds"] = 60
    put = await client.put(f"/v1/campaigns/{cid}", json=edited, headers=brand.h())
    assert put.status_code == 200, put.text
    assert put.json()["version"] == 1 and put.json()["steps"][1]["seconds"] == 60

    launched = await client.post(f"/v1/campaigns/{cid}/launch", headers=brand.h())
    assert launched.status_code == 200, launched.text
    assert launched.json()["status"] == "live"
    assert launched.json()["launched_at"] == NOW.isoformat().replace("+00:00", "Z")
    again = await client.post(f"/v1/campaigns/{cid}/launch", headers=brand.h())
    assert again.status_code == 200 and again.json()["status"] == "live", "a retry is a no-op"

    # A live journey gets a new version; the old one is kept for those enrolled on it.
    moving_clock[0] = NOW + timedelta(hours=1)
    edited["steps"][1] = {"id": "s2", "type": "wait", "days": 1, "next": "s3"}
    put = await client.put(f"/v1/campaigns/{cid}", json=edited, headers=brand.h())
    assert put.status_code == 200, put.text
    assert put.json()["version"] == 2 and put.json()["status"] == "live"
    assert [v["version"] for v in put.json()["versions"]] == [1, 2]
    first = (await client.get(f"/v1/campaigns/{cid}/versions/1", headers=brand.h())).json()
    assert first["steps"][1] == {"id": "s2", "type": "wait", "seconds": 60, "next": "s3"}
    missing = await client.get(f"/v1/campaigns/{cid}/versions/3", headers=brand.h())
    assert missing.status_code == 404

    paused = await client.post(f"/v1/campaigns/{cid}/pause", headers=brand.h())
    assert paused.json()["status"] == "paused"
    wrong = await client.post(f"/v1/campaigns/{cid}/launch", headers=brand.h())
    assert wrong.status_code == 409 and wrong.json()["error"]["code"] == "campaign_status"
    assert (await client.post(f"/v1/campaigns/{cid}/resume", headers=brand.h())).json()[
        "status"
    ] == "live"
    stopped = await client.post(f"/v1/campaigns/{cid}/stop", headers=brand.h())
    assert stopped.json()["status"] == "stopped"
    for action in ("launch", "pause", "resume"):
        refused = await client.post(f"/v1/campaigns/{cid}/{action}", headers=brand.h())
        assert refused.status_code == 409, action
    refused = await client.put(f"/v1/campaigns/{cid}", json=edited, headers=brand.h())
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "campaign_status"
    gone = await client.delete(f"/v1/campaigns/{cid}", headers=brand.h())
    assert gone.status_code == 409, "a journey that ran is kept"

    listed = (await client.get("/v1/campaigns?status=stopped", headers=brand.h())).json()
    assert [c["id"] for c in listed["items"]] == [cid] and listed["next_cursor"] is None


def _with(change: Any) -> dict[str, Any]:
    journey = copy.deepcopy(WELCOME)
    change(journey)
    return journey


def _step(journey: dict[str, Any], i: int, **fields: Any) -> None:
    journey["steps"][i].update(fields)


BAD: list[tuple[str, Any, str]] = [
    ("no steps", lambda j: j.update(steps=[]), "steps"),
    ("unknown step type", lambda j: _step(j, 1, type="sleep"), "steps[1].type"),
    ("dangling branch", lambda j: _step(j, 0, next="s9"), "steps[0].next"),
    ("unreachable step", lambda j: _step(j, 1, next=None), "steps[2]"),
    (
        "cycle without a wait",
        lambda j: (
            _step(j, 2, next="s4"),
            j["steps"].append(
                {"id": "s4", "type": "action", "action": "award_points", "points": 1, "next": "s3"}
            ),
        ),
        "steps[2]",
    ),
    ("step id twice", lambda j: _step(j, 2, id="s1"), "steps[2].id"),
    ("two kinds of wait", lambda j: _step(j, 1, days=1), "steps[1]"),
    (
        "bad until",
        lambda j: j["steps"][1].update({"until": "25:00"}) or j["steps"][1].pop("seconds"),
        "steps[1].until",
    ),
    ("unknown channel", lambda j: _step(j, 0, channel="fax"), "steps[0].channel"),
    (
        "unknown variable",
        lambda j: _step(j, 0, content={"text": "hi {{nickname}}"}),
        "steps[0].content.text",
    ),
    ("unknown field", lambda j: _step(j, 0, colour="red"), "steps[0].colour"),
    ("unknown trigger", lambda j: j.update(trigger={"type": "birthday"}), "trigger.type"),
    (
        "bad cron",
        lambda j: j.update(trigger={"type": "schedule", "cron": "61 * * * *", "segment_id": 1}),
        "trigger.cron",
    ),
    (
        "an event a journey cannot start on",
        lambda j: j.update(trigger={"type": "event", "event_type": "group.created"}),
        "trigger.event_type",
    ),
    (
        "unknown event type",
        lambda j: j.update(trigger={"type": "event", "event_type": "order.teleported"}),
        "trigger.event_type",
    ),
    (
        "one variant",
        lambda j: j["steps"].__setitem__(
            1, {"id": "s2", "type": "split", "variants": [{"name": "a", "weight": 1, "next": "s3"}]}
        ),
        "steps[1].variants",
    ),
    (
        "reentry days without its policy",
        lambda j: j.update(reentry={"policy": "once", "days": 3}),
        "reentry.days",
    ),
]


@pytest.mark.parametrize(("case", "change", "path"), BAD, ids=[c for c, _, _ in BAD])
async def test_a_bad_journey_is_refused_naming_the_path_and_nothing_is_saved(
    client: httpx.AsyncClient,
    session: AsyncSession,
    brand: Brand,
    case: str,
    change: Any,
    path: str,
) -> None:
    before = await _count(session, "campaigns")
    response = await client.post("/v1/campaigns", json=_with(change), headers=brand.h())
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_journey" and error["details"]["path"] == path, error
    assert await _count(session, "campaigns") == before


async def test_what_a_journey_names_must_be_the_tenants(
    client: httpx.AsyncClient, session: AsyncSession, brand: Brand
) -> None:
    other = await make_tenant(session)
    [foreign_tag] = await make_tags(session, other.id, 1)
    tag, _ = brand.tags
    cases = [
        ({"type": "tag.added", "tag_id": foreign_tag}, None, "trigger.tag_id"),
        (
            {"type": "segment.entered", "segment_id": brand.segment + 1000},
            None,
            "trigger.segment_id",
        ),
        (
            {"type": "contact.added"},
            {
                "id": "s2",
                "type": "condition",
                "rule": {"tag": foreign_tag},
                "yes": "s3",
                "no": None,
            },
            "steps[1].rule.tag",
        ),
        (
            {"type": "contact.added"},
            {
                "id": "s2",
                "type": "action",
                "action": "add_tag",
                "tag_id": foreign_tag,
                "next": "s3",
            },
            "steps[1].tag_id",
        ),
    ]
    for trigger, step, path in cases:
        journey = copy.deepcopy(WELCOME)
        journey["trigger"] = trigger
        if step is not None:
            journey["steps"][1] = step
        response = await client.post("/v1/campaigns", json=journey, headers=brand.h())
        assert response.status_code == 422, (path, response.text)
        assert response.json()["error"]["details"]["path"] == path
    # The same journeys with the tenant's own tag and segment are saved.
    ok = copy.deepcopy(WELCOME)
    ok["name"] = "tagged"
    ok["trigger"] = {"type": "segment.entered", "segment_id": brand.segment}
    ok["steps"][1] = {
        "id": "s2",
        "type": "condition",
        "rule": {"tag": tag, "min_weight": 5},
        "yes": "s3",
        "no": None,
    }
    ok["goals"] = [{"event": "order.paid", "where": {"channel": "tmall"}}]
    saved = await client.post("/v1/campaigns", json=ok, headers=brand.h())
    assert saved.status_code == 201, saved.text


async def test_every_step_type_and_a_cycle_through_a_wait_are_accepted(
    client: httpx.AsyncClient, brand: Brand
) -> None:
    tag, other = brand.tags
    journey = {
        "name": "nurture",
        "trigger": {"type": "group.joined", "chat_ids": ["wrChat1"]},
        "reentry": {"policy": "once_per_days", "days": 30},
        "goals": [{"event": "order.paid"}],
        "when_lost": "stay",
        "when_opted_out": "exit",
        "steps": [
            {
                "id": "tutorial",
                "type": "wait_for",
                "event": "comment",
                "timeout": {"days": 3},
                "on_event": "done",
                "on_timeout": "send",
            },
            {
                "id": "send",
                "type": "action",
                "action": "send",
                "channel": "wecom_single",
                "content": {"text": "{{name}}, {{points_balance}} points"},
                "over_quota": "postpone",
                "next": "ab",
            },
            {
                "id": "ab",
                "type": "split",
                "holdout": 0.1,
                "variants": [
                    {"name": "a", "weight": 50, "next": "tag"},
                    {"name": "b", "weight": 50, "next": "check"},
                ],
            },
            {
                "id": "tag",
                "type": "action",
                "action": "add_tag",
                "tag_id": tag,
                "weight": 10,
                "next": "points",
            },
            {
                "id": "points",
                "type": "action",
                "action": "award_points",
                "points": 50,
                "next": "task",
            },
            {
                "id": "task",
                "type": "action",
                "action": "create_task",
                "title": "call {{name}}",
                "next": "hook",
            },
            {
                "id": "hook",
                "type": "action",
                "action": "call_webhook",
                "url": "https://crm.example.com/hook",
                "next": "untag",
            },
            {
                "id": "untag",
                "type": "action",
                "action": "remove_tag",
                "tag_id": other,
                "next": "morning",
            },
            {
                "id": "check",
                "type": "condition",
                "rule": {"field": "lifecycle_stage", "eq": "silent"},
                "yes": "morning",
                "no": "done",
            },
            # Back to the start through a wait: allowed.
            {"id": "morning", "type": "wait", "until": "10:00", "next": "tutorial"},
            {"id": "done", "type": "exit"},
        ],
    }
    saved = await client.post("/v1/campaigns", json=journey, headers=brand.h())
    assert saved.status_code == 201, saved.text
    shown = (await client.get(f"/v1/campaigns/{saved.json()['id']}", headers=brand.h())).json()
    assert shown["trigger_type"] == "group.joined"
    assert shown["reentry"] == {"policy": "once_per_days", "days": 30}
    assert [s["type"] for s in shown["steps"]][:3] == ["wait_for", "action", "split"]


async def test_names_roles_and_tenants(
    client: httpx.AsyncClient, session: AsyncSession, brand: Brand
) -> None:
    first = await client.post("/v1/campaigns", json=WELCOME, headers=brand.h("admin"))
    assert first.status_code == 201
    twice = await client.post("/v1/campaigns", json=WELCOME, headers=brand.h())
    assert twice.status_code == 409 and twice.json()["error"]["code"] == "campaign_name_taken"
    second = await client.post(
        "/v1/campaigns", json={**WELCOME, "name": "other"}, headers=brand.h()
    )
    cid = second.json()["id"]
    renamed = await client.put(f"/v1/campaigns/{cid}", json=WELCOME, headers=brand.h())
    assert renamed.status_code == 409 and renamed.json()["error"]["code"] == "campaign_name_taken"

    assert (
        await client.post(
            "/v1/campaigns", json={**WELCOME, "name": "x"}, headers=brand.h("analyst")
        )
    ).status_code == 403
    assert (await client.get(f"/v1/campaigns/{cid}", headers=brand.h("staff"))).status_code == 403
    assert (
        await client.post(f"/v1/campaigns/{cid}/launch", headers=brand.h("analyst"))
    ).status_code == 403

    other = await make_tenant(session)
    outsider = bearer(await make_key(session, other, "admin"))
    assert (await client.get(f"/v1/campaigns/{cid}", headers=outsider)).status_code == 404
    assert (await client.post(f"/v1/campaigns/{cid}/launch", headers=outsider)).status_code == 404
    assert (await client.get("/v1/campaigns", headers=outsider)).json()["items"] == []

    deleted = await client.delete(f"/v1/campaigns/{cid}", headers=brand.h())
    assert deleted.status_code == 204
    assert (await client.get(f"/v1/campaigns/{cid}", headers=brand.h())).status_code == 404


async def test_an_event_trigger_starts_on_a_business_or_custom_event(
    client: httpx.AsyncClient, brand: Brand
) -> None:
    for n, event_type in enumerate(("order.paid", "custom.signed_up", "tier.changed")):
        journey = {
            **copy.deepcopy(WELCOME),
            "name": f"on {n}",
            "trigger": {"type": "event", "event_type": event_type, "where": {"channel": "tmall"}},
        }
        saved = await client.post("/v1/campaigns", json=journey, headers=brand.h())
        assert saved.status_code == 201, (event_type, saved.text)
