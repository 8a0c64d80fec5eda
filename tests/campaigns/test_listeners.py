"""Contacts already in journeys, on the real bus: goals convert them wherever they are,
the event a wait_for waits for moves them on (its timeout otherwise), and merged,
erased, lost and opted-out contacts follow or leave as the journey says."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from services.campaigns import clock
from services.campaigns.runner.loop import JourneyRunner
from services.campaigns.sends.dispatch import SendDispatcher
from services.users import consent
from shared.db import unit_of_work
from shared.events import publish_many
from shared.runtime import Runtime
from tests.campaigns.test_runner import Moving, _enrol, _launch, _send, _setup, _where
from tests.shared.bus_support import relay_all, work_until_idle


@pytest.fixture
def moving() -> Any:
    # From the real time on: the events' times are the database's.
    at = Moving(datetime.now(UTC))
    with clock.use(at):
        yield at


async def _publish(
    runtime: Runtime, tenant_id: uuid.UUID, events: list[tuple[str, dict[str, Any]]]
) -> None:
    async with unit_of_work(runtime.sessionmaker) as session:
        await publish_many(session, [(t, p, tenant_id) for t, p in events])
    await relay_all(runtime)
    await work_until_idle(runtime, "campaigns")


def _order(contact: uuid.UUID, **properties: Any) -> dict[str, Any]:
    return {
        "contact_id": str(contact),
        "event_id": uuid.uuid4().hex,
        "occurred_at": "2026-12-01T10:00:00+08:00",
        "properties": properties,
        "source": "event",
    }


async def _ends(runtime: Runtime, cid: int) -> dict[uuid.UUID, tuple[str, str | None]]:
    async with runtime.engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT contact_id, status, end_reason FROM campaign_enrolments "
                "WHERE campaign_id = :c"
            ),
            {"c": cid},
        )
        return {r[0]: (r[1], r[2]) for r in rows}


async def test_a_goal_converts_and_a_wait_for_moves_on_or_times_out(
    committed: Runtime, committed_client: httpx.AsyncClient, moving: Moving
) -> None:
    tenant, h, (buyer, replier, silent, early) = await _setup(committed, ["B", "R", "S", "E"])
    # An order from before anyone entered converts nobody.
    async with unit_of_work(committed.sessionmaker) as session:
        await publish_many(session, [("order.paid", _order(early, channel="tmall"), tenant.id)])
    moving.now = datetime.now(UTC)  # entering after the order
    journey = {
        "name": "nurture",
        "trigger": {"type": "manual"},
        "goals": [{"event": "order.paid", "where": {"channel": "tmall"}}],
        "steps": [
            {
                "id": "ask",
                "type": "wait_for",
                "event": "custom.replied",
                "timeout": {"days": 3},
                "on_event": "thanks",
                "on_timeout": "nudge",
            },
            _send("thanks", "Thanks!"),
            _send("nudge", "Still there?"),
        ],
    }
    cid = await _launch(committed_client, h, journey)
    await _enrol(committed_client, h, cid, [buyer, replier, silent, early])
    await JourneyRunner(committed).drain()
    assert set((await _where(committed, cid)).values()) == {("ask", "waiting")}
    await relay_all(committed)
    await work_until_idle(committed, "campaigns")
    moving.advance(hours=1)
    await _publish(
        committed,
        tenant.id,
        [
            ("order.paid", _order(buyer, channel="jd")),  # not the goal's channel
            ("order.paid", _order(buyer, channel="tmall")),
            ("custom.replied", _order(replier)),
            ("custom.replied", _order(replier)),  # a second reply changes nothing
        ],
    )
    ends = await _ends(committed, cid)
    assert ends[buyer] == ("converted", "goal:order.paid")
    assert ends[early] == ("waiting", None), "the order before it entered is not its goal"
    assert (await _where(committed, cid))[replier] == ("thanks", "active")
    await JourneyRunner(committed).drain()
    assert (await _where(committed, cid))[replier] == ("thanks", "done")
    moving.advance(days=3)
    await JourneyRunner(committed).drain()
    assert (await _where(committed, cid))[silent] == ("nudge", "done")
    async with committed.engine.connect() as conn:
        sent = dict(
            (
                await conn.execute(
                    text("SELECT contact_id, step_id FROM campaign_sends WHERE campaign_id = :c"),
                    {"c": cid},
                )
            ).all()
        )
    assert sent == {replier: "thanks", silent: "nudge", early: "nudge"}


async def test_merged_erased_lost_and_opted_out_contacts_follow_or_leave(
    committed: Runtime, committed_client: httpx.AsyncClient, moving: Moving
) -> None:
    tenant, h, people = await _setup(committed, [f"p{i}" for i in range(7)])
    merged, survivor, both, both_survivor, erased, lost, opted = people
    waiting = {"id": "w", "type": "wait", "days": 1, "next": "hello"}
    journey = {
        "name": "leaving",
        "trigger": {"type": "manual"},
        "when_opted_out": "exit",
        "steps": [waiting, _send("hello", "Hello")],
    }
    staying = {**journey, "name": "staying", "when_lost": "stay", "when_opted_out": "skip"}
    cid = await _launch(committed_client, h, journey)
    other = await _launch(committed_client, h, staying)
    await _enrol(committed_client, h, cid, [merged, both, both_survivor, erased, lost, opted])
    await _enrol(committed_client, h, other, [lost, opted])
    await JourneyRunner(committed).drain()
    await relay_all(committed)
    await work_until_idle(committed, "campaigns")
    await _publish(
        committed,
        tenant.id,
        [
            ("contact.merged", {"survivor_id": str(survivor), "merged_id": str(merged)}),
            ("contact.merged", {"survivor_id": str(both_survivor), "merged_id": str(both)}),
            ("contact.erased", {"contact_id": str(erased), "pseudonym": "x"}),
            ("contact.lost", {"contact_id": str(lost), "staff_userid": "s1"}),
        ],
    )
    async with unit_of_work(committed.sessionmaker) as session:
        await consent.record(
            session, tenant.id, opted, channel="in_app", opted_in=False, source="test"
        )
    await relay_all(committed)
    await work_until_idle(committed, "campaigns")
    ends = await _ends(committed, cid)
    assert ends[survivor] == ("waiting", None), "the merged contact's place is the survivor's"
    assert merged not in ends
    assert ends[both] == ("exited", "merged"), "the survivor was in the journey already"
    assert ends[both_survivor] == ("waiting", None)
    assert ends[erased] == ("exited", "erased")
    assert ends[lost] == ("exited", "lost")
    assert ends[opted] == ("exited", "opted_out")
    assert await _ends(committed, other) == {lost: ("waiting", None), opted: ("waiting", None)}
    moving.advance(days=1, seconds=1)
    await JourneyRunner(committed).drain()
    assert (await _where(committed, other))[opted] == ("hello", "done")
    async with committed.engine.connect() as conn:
        reason = await conn.scalar(
            text("SELECT reason FROM campaign_sends WHERE campaign_id = :c AND contact_id = :p"),
            {"c": other, "p": opted},
        )
    assert reason == "consent", "under skip the contact stays, its sends are skipped"


async def test_points_expiring_notices_go_out_once_per_channel(
    committed: Runtime, committed_client: httpx.AsyncClient, moving: Moving
) -> None:
    tenant, h, (member,) = await _setup(committed, ["Mei"])
    bad = await committed_client.put(
        "/v1/campaigns/settings", json={"expiry_notice": "{{points}} expire"}, headers=h
    )
    assert bad.status_code == 422
    good = await committed_client.put(
        "/v1/campaigns/settings",
        json={
            "quiet_hours": None,
            "expiry_notice": "{{name}}, {{expiring_points}} points expire on {{expiring_at}}",
        },
        headers=h,
    )
    assert good.status_code == 200, good.text
    notice = {
        "contact_id": str(member),
        "expires_on": "2026-12-31",
        "points": 320,
        "channels": ["in_app", "sms", "wecom_template"],
        "notice_id": 1042,
    }
    async with unit_of_work(committed.sessionmaker) as session:
        await publish_many(session, [("points.expiring", notice, tenant.id)] * 2)
    await relay_all(committed)
    await work_until_idle(committed, "campaigns")
    await SendDispatcher(committed).drain()
    sends = (await committed_client.get(f"/v1/contacts/{member}/sends", headers=h)).json()["items"]
    assert sorted((s["channel"], s["status"], s["reason"]) for s in sends) == [
        ("in_app", "delivered", None),
        ("sms", "skipped", "no_sms"),
        ("wecom_single", "skipped", "not_on_wecom"),
    ]
    inbox = (await committed_client.get(f"/v1/contacts/{member}/inbox", headers=h)).json()
    assert [m["text"] for m in inbox["items"]] == ["Mei, 320 points expire on 2026-12-31"]
    assert inbox["unread"] == 1
    read = await committed_client.post(
        f"/v1/contacts/{member}/inbox/{inbox['items'][0]['id']}/read", headers=h
    )
    assert read.status_code == 200 and read.json()["read_at"] is not None
    assert (await committed_client.get(f"/v1/contacts/{member}/inbox", headers=h)).json()[
        "unread"
    ] == 0
