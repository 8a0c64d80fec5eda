"""The journey runner on real Postgres, over a simulated clock in Asia/Shanghai: every
step type, waits that are never early and never run twice, versions side by side,
and the in-app channel delivering each send once."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from services.campaigns import clock
from services.campaigns.runner.engine import pick_variant, wait_until
from services.campaigns.runner.loop import JourneyRunner
from services.campaigns.sends.dispatch import SendDispatcher
from services.tagging.segments.models import Segment
from services.users.identity import identity_context, name_context
from services.users.models import Contact, ContactIdentity
from shared.db import unit_of_work
from shared.relay import DELIVER_JOB
from shared.runtime import Runtime
from tests.helpers import bearer, make_key, make_tenant
from tests.shared.bus_support import relay_all, work_until_idle

SHANGHAI = "Asia/Shanghai"
# 2026-12-01 09:30 in Shanghai.
NOW = datetime(2026, 12, 1, 1, 30, tzinfo=UTC)


class Moving:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def moving() -> Any:
    at = Moving(NOW)
    with clock.use(at):
        yield at


async def _setup(runtime: Runtime, names: list[str]) -> tuple[Any, dict[str, str], list[uuid.UUID]]:
    async with unit_of_work(runtime.sessionmaker) as session:
        tenant = await make_tenant(session)
        h = bearer(await make_key(session, tenant, "operator"))
        ids = [uuid.uuid4() for _ in names]
        context = name_context(tenant.id)
        session.add_all(
            Contact(id=i, tenant_id=tenant.id, name_enc=runtime.cipher.encrypt(n, context=context))
            for i, n in zip(ids, names, strict=True)
        )
    return tenant, h, ids


async def _launch(client: httpx.AsyncClient, h: dict[str, str], journey: dict[str, Any]) -> int:
    created = await client.post("/v1/campaigns", json=journey, headers=h)
    assert created.status_code == 201, created.text
    cid = int(created.json()["id"])
    assert (await client.post(f"/v1/campaigns/{cid}/launch", headers=h)).status_code == 200
    return cid


async def _enrol(
    client: httpx.AsyncClient, h: dict[str, str], cid: int, ids: list[uuid.UUID]
) -> None:
    answer = await client.post(
        f"/v1/campaigns/{cid}/enrol", json={"contact_ids": [str(i) for i in ids]}, headers=h
    )
    assert answer.status_code == 200, answer.text


async def _where(runtime: Runtime, cid: int) -> dict[uuid.UUID, tuple[str, str]]:
    async with runtime.engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT contact_id, step_id, status FROM campaign_enrolments WHERE campaign_id = :c"
            ),
            {"c": cid},
        )
        return {r[0]: (r[1], r[2]) for r in rows}


async def _inbox(runtime: Runtime, contact: uuid.UUID) -> list[str]:
    async with runtime.engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT text FROM contact_inbox WHERE contact_id = :c ORDER BY id"),
            {"c": contact},
        )
        return [r[0] for r in rows]


async def _run(runtime: Runtime) -> None:
    await JourneyRunner(runtime).drain()
    await SendDispatcher(runtime).drain()


def _send(step_id: str, text_: str, next_: str | None = None) -> dict[str, Any]:
    step: dict[str, Any] = {
        "id": step_id,
        "type": "action",
        "action": "send",
        "channel": "in_app",
        "content": {"text": text_},
    }
    if next_:
        step["next"] = next_
    return step


async def test_sends_and_waits_run_on_the_tenant_clock_never_early_never_twice(
    committed: Runtime, committed_client: httpx.AsyncClient, moving: Moving
) -> None:
    _, h, (alice, bob) = await _setup(committed, ["Alice", "Bob"])
    journey = {
        "name": "onboarding",
        "trigger": {"type": "manual"},
        "steps": [
            _send("hello", "Hi {{name}}", "pause"),
            {"id": "pause", "type": "wait", "seconds": 3600, "next": "tomorrow"},
            _send("tomorrow", "One hour later", "morning"),
            {"id": "morning", "type": "wait", "until": "10:00", "next": "last"},
            _send("last", "Good morning {{name}}"),
        ],
    }
    cid = await _launch(committed_client, h, journey)
    await _enrol(committed_client, h, cid, [alice, bob])
    await _run(committed)
    assert await _inbox(committed, alice) == ["Hi Alice"]
    assert (await _where(committed, cid))[bob] == ("pause", "waiting")
    # Runners side by side, a second before the wait ends: nothing moves.
    moving.advance(seconds=3599)
    await asyncio.gather(*(JourneyRunner(committed).drain() for _ in range(3)))
    assert (await _where(committed, cid))[alice] == ("pause", "waiting")
    moving.advance(seconds=1)  # 10:30 Shanghai
    await asyncio.gather(*(_run(committed) for _ in range(3)))
    assert await _inbox(committed, alice) == ["Hi Alice", "One hour later"], "once"
    # The next 10:00 in Shanghai is tomorrow's, 23.5 h on.
    assert (await _where(committed, cid))[alice] == ("morning", "waiting")
    moving.advance(hours=23, minutes=29)
    await _run(committed)
    assert (await _where(committed, cid))[alice] == ("morning", "waiting")
    moving.advance(minutes=1)
    await _run(committed)
    assert await _inbox(committed, bob) == ["Hi Bob", "One hour later", "Good morning Bob"]
    assert (await _where(committed, cid))[bob] == ("last", "done")
    sends = await committed_client.get(f"/v1/campaigns/{cid}/sends", headers=h)
    assert sends.status_code == 200, sends.text
    items = sends.json()["items"]
    assert len(items) == 6
    assert {i["status"] for i in items} == {"delivered"}


def test_wait_until_and_days_follow_the_tenant_calendar() -> None:
    from zoneinfo import ZoneInfo

    tz = ZoneInfo(SHANGHAI)
    at = datetime(2026, 12, 1, 1, 30, tzinfo=UTC)  # 09:30 Shanghai
    assert wait_until({"until": "10:00"}, at, tz) == datetime(2026, 12, 1, 2, 0, tzinfo=UTC)
    assert wait_until({"until": "09:30"}, at, tz) == datetime(2026, 12, 2, 1, 30, tzinfo=UTC)
    assert wait_until({"days": 7}, at, tz) == datetime(2026, 12, 8, 1, 30, tzinfo=UTC)
    # A day is a calendar day where the clocks change, not 24 hours.
    ny = ZoneInfo("America/New_York")
    before = datetime(2026, 11, 1, 4, 0, tzinfo=UTC)  # 00:00 EDT, the night clocks go back
    assert wait_until({"days": 1}, before, ny).astimezone(ny).hour == 0
    assert wait_until({"days": 1}, before, ny) - before == timedelta(hours=25)


def test_a_split_routes_by_weight_and_holds_out_its_share() -> None:
    step = {
        "id": "ab",
        "variants": [{"name": "a", "weight": 3, "next": None}, {"name": "b", "weight": 1}],
        "holdout": 0.1,
    }
    picks = [pick_variant(step, i) for i in range(20_000)]
    held = sum(p is None for p in picks)
    a = sum(p is not None and p["name"] == "a" for p in picks)
    assert 1_700 < held < 2_300
    assert 0.72 < a / (20_000 - held) < 0.78
    assert picks == [pick_variant(step, i) for i in range(20_000)], "stable"


async def test_condition_split_exit_tags_points_and_tasks(
    committed: Runtime, committed_client: httpx.AsyncClient, moving: Moving
) -> None:
    tenant, h, contacts = await _setup(committed, [f"c{i}" for i in range(40)])
    tag = await committed_client.post(
        "/v1/tag-groups", json={"name": "journey", "half_life_days": 30, "floor": 1}, headers=h
    )
    assert tag.status_code == 201, tag.text
    made = await committed_client.post(
        "/v1/tags", json={"group_id": tag.json()["id"], "name": "welcomed"}, headers=h
    )
    assert made.status_code == 201, made.text
    tag_id = made.json()["id"]
    journey = {
        "name": "branches",
        "trigger": {"type": "manual"},
        "steps": [
            {
                "id": "ab",
                "type": "split",
                "variants": [
                    {"name": "a", "weight": 1, "next": "tag"},
                    {"name": "b", "weight": 1, "next": "bye"},
                ],
            },
            {
                "id": "tag",
                "type": "action",
                "action": "add_tag",
                "tag_id": tag_id,
                "next": "gift",
            },
            {
                "id": "gift",
                "type": "action",
                "action": "award_points",
                "points": 50,
                "reason": "welcome gift",
                "next": "call",
            },
            {
                "id": "call",
                "type": "action",
                "action": "create_task",
                "title": "Call {{name}}",
                "due_in_hours": 48,
            },
            {"id": "bye", "type": "exit"},
        ],
    }
    cid = await _launch(committed_client, h, journey)
    await _enrol(committed_client, h, cid, contacts)
    await _run(committed)
    where = await _where(committed, cid)
    tagged = [c for c, (step, status) in where.items() if (step, status) == ("call", "done")]
    left = [c for c, (step, status) in where.items() if (step, status) == ("bye", "exited")]
    assert len(tagged) + len(left) == 40 and tagged and left
    async with committed.engine.connect() as conn:
        events = (
            await conn.execute(
                text(
                    "SELECT id, type, payload FROM outbox_events WHERE tenant_id = :t "
                    "AND type LIKE 'campaign.%' ORDER BY id"
                ),
                {"t": tenant.id},
            )
        ).all()
        tasks = (
            await conn.execute(
                text(
                    "SELECT contact_id, title, due_at FROM campaign_staff_tasks "
                    "WHERE campaign_id = :c"
                ),
                {"c": cid},
            )
        ).all()
    assert sorted(p["contact_id"] for _, t, p in events if t == "campaign.tag_requested") == sorted(
        str(c) for c in tagged
    )
    awards = [p for _, t, p in events if t == "campaign.points_awarded"]
    assert len(awards) == len(tagged) and {a["points"] for a in awards} == {50}
    assert len({a["key"] for a in awards}) == len(awards)
    assert len(tasks) == len(tagged)
    assert {t.due_at for t in tasks} == {NOW + timedelta(hours=48)}
    names = {c: f"c{i}" for i, c in enumerate(contacts)}
    assert {t.title for t in tasks} == {f"Call {names[c]}" for c in tagged}
    # The points service books each award once, however often it is delivered.
    await relay_all(committed)
    queue = committed.queue_name("points")
    ids = [e.id for e in events]
    for _ in range(2):
        await committed.redis.enqueue_job(DELIVER_JOB, ids, _queue_name=queue)
    await work_until_idle(committed, "points")
    async with committed.engine.connect() as conn:
        balances = dict(
            (
                await conn.execute(
                    text("SELECT contact_id, balance FROM points_accounts WHERE tenant_id = :t"),
                    {"t": tenant.id},
                )
            ).all()
        )
    assert balances == {c: 50 for c in tagged}


async def test_settings_are_checked_and_the_governor_skips_or_defers_with_reasons(
    committed: Runtime, committed_client: httpx.AsyncClient, moving: Moving
) -> None:
    _, h, (quiet, opted, rude, capped) = await _setup(committed, ["Q", "O", "R", "C"])
    shown = await committed_client.get("/v1/campaigns/settings", headers=h)
    assert shown.status_code == 200
    assert shown.json()["quiet_hours"] == {"start": "22:00", "end": "08:00"}
    assert shown.json()["wecom_monthly_quota"] == 4
    bad = await committed_client.put(
        "/v1/campaigns/settings",
        json={"quiet_hours": {"start": "25:00", "end": "08:00"}},
        headers=h,
    )
    assert bad.status_code == 422
    assert (await committed_client.get("/v1/campaigns/settings", headers=h)).json() == shown.json()
    settings = {
        "quiet_hours": {"start": "22:00", "end": "08:00"},
        "caps": {"in_app": {"day": 1}},
        "sensitive_words": {"mode": "block", "words": ["加微信"]},
        "webhook_secret": "s3cret-s3cret-s3cret",
        "sms_provider": {
            "base_url": "http://127.0.0.1:9",
            "api_key": "k",
            "secret": "sms-secret-sms-secret",
        },
    }
    put = await committed_client.put("/v1/campaigns/settings", json=settings, headers=h)
    assert put.status_code == 200, put.text
    assert put.json()["webhook_secret"] == "****cret"
    async with unit_of_work(committed.sessionmaker) as session:
        from services.users import consent

        tenant_id = (
            await session.execute(
                text("SELECT tenant_id FROM contacts WHERE id = :c"), {"c": opted}
            )
        ).scalar_one()
        await consent.record(
            session, tenant_id, opted, channel="in_app", opted_in=False, source="test"
        )
    journey = {
        "name": "rules",
        "trigger": {"type": "manual"},
        "reentry": {"policy": "every_time"},
        "steps": [
            {
                "id": "push",
                "type": "action",
                "action": "send",
                "channel": "sms",
                "content": {"text": "Offer for {{name}}"},
                "next": "inbox",
            },
            _send("inbox", "Hello {{name}}, 加微信 now"),
        ],
    }
    async with unit_of_work(committed.sessionmaker) as session:
        session.add(
            ContactIdentity(
                tenant_id=tenant_id,
                contact_id=quiet,
                kind="phone",
                value_bidx=committed.cipher.blind_index(
                    "+8613800138000", kind="phone", tenant=str(tenant_id)
                ),
                value_enc=committed.cipher.encrypt(
                    "+8613800138000", context=identity_context(tenant_id, "phone")
                ),
                source="webhook",
            )
        )
    moving.now = datetime(2026, 12, 1, 15, 0, tzinfo=UTC)  # 23:00 Shanghai: quiet hours
    cid = await _launch(committed_client, h, journey)
    await _enrol(committed_client, h, cid, [quiet])
    await _run(committed)
    sends = (await committed_client.get(f"/v1/campaigns/{cid}/sends", headers=h)).json()["items"]
    assert [(s["step_id"], s["status"], s["reason"]) for s in sends] == [
        ("push", "deferred", "quiet_hours")
    ]
    assert sends[0]["due_at"].startswith("2026-12-02T00:00:00")  # 08:00 Shanghai
    moving.now = datetime(2026, 12, 2, 0, 0, tzinfo=UTC)
    await JourneyRunner(committed).drain()
    sends = (await committed_client.get(f"/v1/campaigns/{cid}/sends", headers=h)).json()["items"]
    by_step = {s["step_id"]: (s["status"], s["reason"]) for s in sends}
    assert by_step == {
        "push": ("planned", None),
        "inbox": ("skipped", "sensitive_word"),
    }, "the same send row, decided again when the window ended"
    assert len(sends) == 2
    assert [s["text"] for s in sends if s["step_id"] == "push"] == ["Offer for Q"]
    # Consent and the daily in-app cap.
    journey2 = {
        "name": "inbox only",
        "trigger": {"type": "manual"},
        "reentry": {"policy": "every_time"},
        "steps": [_send("one", "Hi {{name}}")],
    }
    cid2 = await _launch(committed_client, h, journey2)
    await _enrol(committed_client, h, cid2, [opted, capped])
    await _enrol(committed_client, h, cid2, [capped])
    await _run(committed)
    sends = (await committed_client.get(f"/v1/campaigns/{cid2}/sends", headers=h)).json()["items"]
    outcome = sorted((s["contact_id"], s["status"], s["reason"]) for s in sends)
    assert outcome == sorted(
        [
            (str(opted), "skipped", "consent"),
            (str(capped), "delivered", None),
            (str(capped), "skipped", "cap"),
        ]
    )
    assert await _inbox(committed, capped) == ["Hi C"]
    assert rude


async def test_reviews_tasks_and_counts(
    committed: Runtime, committed_client: httpx.AsyncClient, moving: Moving
) -> None:
    _, h, (ann, ben, cat) = await _setup(committed, ["Ann", "Ben", "Cat"])
    settings = {"sensitive_words": {"mode": "review", "words": ["最低价"]}}
    assert (
        await committed_client.put("/v1/campaigns/settings", json=settings, headers=h)
    ).status_code == 200
    journey = {
        "name": "reviewed",
        "trigger": {"type": "manual"},
        "steps": [
            _send("promo", "{{name}}: 全网最低价", "call"),
            {
                "id": "call",
                "type": "action",
                "action": "create_task",
                "title": "Call {{name}}",
                "due_in_hours": 2,
                "next": "end",
            },
            {"id": "end", "type": "exit"},
        ],
    }
    cid = await _launch(committed_client, h, journey)
    await _enrol(committed_client, h, cid, [ann, ben, cat])
    await _run(committed)
    reviews = (await committed_client.get("/v1/campaigns/reviews", headers=h)).json()["items"]
    assert sorted(r["text"] for r in reviews) == [f"{n}: 全网最低价" for n in ("Ann", "Ben", "Cat")]
    assert {tuple(r["words"]) for r in reviews} == {("最低价",)}
    by_name = {r["text"].split(":")[0]: r["id"] for r in reviews}
    ok = await committed_client.post(f"/v1/campaigns/reviews/{by_name['Ann']}/approve", headers=h)
    assert ok.status_code == 200 and ok.json()["status"] == "approved"
    no = await committed_client.post(f"/v1/campaigns/reviews/{by_name['Ben']}/reject", headers=h)
    assert no.json()["status"] == "rejected"
    twice = await committed_client.post(
        f"/v1/campaigns/reviews/{by_name['Ben']}/approve", headers=h
    )
    assert twice.status_code == 409 and twice.json()["error"]["code"] == "review_decided"
    missing = await committed_client.post("/v1/campaigns/reviews/999999/approve", headers=h)
    assert missing.status_code == 404
    await _run(committed)
    assert await _inbox(committed, ann) == ["Ann: 全网最低价"]
    assert await _inbox(committed, ben) == []
    still = (await committed_client.get("/v1/campaigns/reviews", headers=h)).json()["items"]
    assert [r["id"] for r in still] == [by_name["Cat"]]
    # Tasks: one per contact, for its owner; one confirmed, the others overdue later.
    tasks = (
        await committed_client.get("/v1/campaigns/tasks", params={"campaign_id": cid}, headers=h)
    ).json()["items"]
    assert sorted(t["title"] for t in tasks) == ["Call Ann", "Call Ben", "Call Cat"]
    assert {t["status"] for t in tasks} == {"open"}
    done = await committed_client.post(f"/v1/campaigns/tasks/{tasks[0]['id']}/confirm", headers=h)
    assert done.status_code == 200 and done.json()["status"] == "confirmed"
    moving.advance(hours=3)
    stats = await committed_client.get(f"/v1/campaigns/{cid}/stats", headers=h)
    assert stats.status_code == 200, stats.text
    body = stats.json()
    assert body["enrolled"] == 3 and body["exited"] == {"exit_step": 3}
    assert body["by_version"] == {"1": 3}
    promo = next(s for s in body["steps"] if s["step_id"] == "promo")
    assert promo["delivered"] == 1 and promo["skipped"] == {"rejected": 1}
    assert promo["deferred"] == 1
    assert body["staff"] == [{"staff_userid": None, "assigned": 3, "confirmed": 1, "overdue": 2}]


async def test_a_schedule_fires_on_the_tenant_clock_once_per_firing(
    committed: Runtime, committed_client: httpx.AsyncClient, moving: Moving
) -> None:
    tenant, h, (ann, ben) = await _setup(committed, ["Ann", "Ben"])
    async with unit_of_work(committed.sessionmaker) as session:
        segment = Segment(tenant_id=tenant.id, name="all", kind="static", status="ready")
        session.add(segment)
        await session.flush()
        for contact in (ann, ben):
            await session.execute(
                text(
                    "INSERT INTO segment_members (segment_id, contact_id, tenant_id) "
                    "VALUES (:s, :c, :t)"
                ),
                {"s": segment.id, "c": contact, "t": tenant.id},
            )
        segment_id = segment.id
    bad = await committed_client.post(
        "/v1/campaigns",
        json={
            "name": "bad",
            "trigger": {"type": "schedule", "cron": "0 25 * * *", "segment_id": segment_id},
            "steps": [_send("daily", "x")],
        },
        headers=h,
    )
    assert bad.status_code == 422 and bad.json()["error"]["details"]["path"] == "trigger.cron"
    journey = {
        "name": "daily tip",
        "trigger": {"type": "schedule", "cron": "0 10 * * *", "segment_id": segment_id},
        "reentry": {"policy": "every_time"},
        "steps": [_send("daily", "Tip of the day")],
    }
    await _launch(committed_client, h, journey)  # 09:30 Shanghai
    moving.advance(minutes=29, seconds=59)
    await _run(committed)
    assert await _inbox(committed, ann) == [], "not before 10:00 Shanghai"
    moving.advance(seconds=1)
    await asyncio.gather(*(_run(committed) for _ in range(3)))
    moving.advance(minutes=5)
    await _run(committed)
    assert await _inbox(committed, ann) == await _inbox(committed, ben) == ["Tip of the day"]
    moving.advance(days=1)
    await _run(committed)
    assert await _inbox(committed, ben) == ["Tip of the day"] * 2


async def test_versions_side_by_side_then_migrated_by_ops(
    committed: Runtime, committed_client: httpx.AsyncClient, moving: Moving
) -> None:
    _, h, (old_one, new_one) = await _setup(committed, ["Old", "New"])
    v1 = {
        "name": "versions",
        "trigger": {"type": "manual"},
        "steps": [
            {"id": "pause", "type": "wait", "days": 2, "next": "offer"},
            _send("offer", "v1 offer"),
        ],
    }
    cid = await _launch(committed_client, h, v1)
    await _enrol(committed_client, h, cid, [old_one])
    await _run(committed)
    v2 = {
        **v1,
        "steps": [
            {"id": "hold", "type": "wait", "days": 1, "next": "deal"},
            _send("deal", "v2 deal"),
        ],
    }
    put = await committed_client.put(f"/v1/campaigns/{cid}", json=v2, headers=h)
    assert put.status_code == 200 and put.json()["version"] == 2
    await _enrol(committed_client, h, cid, [new_one])
    await _run(committed)
    moving.advance(days=1, seconds=1)
    await _run(committed)
    assert await _inbox(committed, new_one) == ["v2 deal"], "new contacts take version 2"
    assert await _inbox(committed, old_one) == [], "the old contact is still on version 1"
    # Migrating needs a map for the steps version 2 lacks; nobody moves without one.
    bad = await committed_client.post(f"/v1/campaigns/{cid}/migrate", json={}, headers=h)
    assert bad.status_code == 422 and bad.json()["error"]["details"]["path"] == "steps.pause"
    moved = await committed_client.post(
        f"/v1/campaigns/{cid}/migrate", json={"steps": {"pause": "hold"}}, headers=h
    )
    assert moved.status_code == 200, moved.text
    assert moved.json() == {"migrated": 1, "version": 2, "by_step": {"hold": 1}}
    await _run(committed)
    assert await _inbox(committed, old_one) == [], "it keeps waiting (its time kept)"
    moving.advance(days=1)
    await _run(committed)
    assert await _inbox(committed, old_one) == ["v2 deal"]
