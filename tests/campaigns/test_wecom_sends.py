"""WeCom sends against the fake WeCom server (every call recorded): the welcome message
of a contact.added journey, once however often the callback comes; 1:1 mass messages
as staff tasks of up to 10,000 recipients, followed up, reminded and cancelled; and a
lost answer or a killed worker never making a second mass message."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlalchemy import text

from services.campaigns import clock
from services.campaigns.runner.loop import JourneyRunner
from services.campaigns.sends.dispatch import SendDispatcher
from services.campaigns.sends.wecom_mass import WeComMassQueue
from services.campaigns.sends.welcome_lane import WelcomeLane
from services.campaigns.settings import campaigns_settings
from services.campaigns.staff.notices import StaffNotices
from services.users.identity import identity_context, name_context
from services.users.models import Contact, ContactFollow, ContactIdentity
from services.users.settings import users_settings
from shared.db import unit_of_work
from shared.events import publish_many
from shared.runtime import Runtime
from tests.clock import wait_until
from tests.helpers import bearer
from tests.shared.bus_support import relay_all, work_until_idle
from tests.users.fake_wecom import FakeWeCom
from tests.users.support import CORP_ID, WeComTenant, contact_event, process_all, wecom_tenant

SECRET = "app-secret-for-campaign-tests"


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeWeCom]:
    async with FakeWeCom(corp_id=CORP_ID, secret=SECRET) as server:
        monkeypatch.setenv("SCRM_WECOM_API_BASE", server.base_url)
        monkeypatch.setenv("SCRM_CAMPAIGNS_WECOM_CHECK_SECONDS", "60")
        monkeypatch.setenv("SCRM_CAMPAIGNS_WECOM_REMIND_AFTER_SECONDS", "3600")
        monkeypatch.setenv("SCRM_CAMPAIGNS_WECOM_DEADLINE_HOURS", "24")
        users_settings.cache_clear()
        campaigns_settings.cache_clear()
        yield server
    users_settings.cache_clear()
    campaigns_settings.cache_clear()


@pytest.fixture
async def corp(committed: Runtime, fake: FakeWeCom) -> WeComTenant:
    return await wecom_tenant(committed, app_secret=SECRET)


class Moving:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def moving() -> Any:
    at = Moving()
    with clock.use(at):
        yield at


async def _launch(client: httpx.AsyncClient, corp: WeComTenant, journey: dict[str, Any]) -> int:
    h = bearer(corp.admin)
    created = await client.post("/v1/campaigns", json=journey, headers=h)
    assert created.status_code == 201, created.text
    cid = int(created.json()["id"])
    assert (await client.post(f"/v1/campaigns/{cid}/launch", headers=h)).status_code == 200
    return cid


async def _settle(runtime: Runtime) -> None:
    for _ in range(3):
        await process_all(runtime)
        await relay_all(runtime)
        await work_until_idle(runtime, "campaigns")
        await JourneyRunner(runtime).drain()
        await SendDispatcher(runtime).drain()


async def test_one_welcome_for_eight_deliveries_of_the_same_add(
    committed: Runtime,
    committed_client: httpx.AsyncClient,
    corp: WeComTenant,
    fake: FakeWeCom,
) -> None:
    fake.add_staff("zhangsan", "张三")
    fake.add_contact("wmW1", "Alice", follow_users=[{"userid": "zhangsan", "state": "qr1"}])
    journey = {
        "name": "welcome",
        "trigger": {"type": "contact.added", "states": ["qr1"]},
        "steps": [
            {
                "id": "hello",
                "type": "action",
                "action": "send",
                "channel": "wecom_welcome",
                "content": {"text": "欢迎 {{name}}"},
            }
        ],
    }
    await _launch(committed_client, corp, journey)
    xml = contact_event("add_external_contact", external="wmW1", State="qr1", WelcomeCode="CODE-1")
    for _ in range(8):  # WeCom retries a callback it thinks was not answered
        answer = await committed_client.post(**corp.callback(xml))
        assert answer.status_code == 200
    await _settle(committed)
    welcomes = fake.messaging.welcomes
    assert [(w["welcome_code"], w["text"]["content"]) for w in welcomes] == [
        ("CODE-1", "欢迎 Alice")
    ]
    assert fake.messaging.calls["send_welcome_msg"] == 1
    async with committed.engine.connect() as conn:
        status = await conn.scalar(
            text("SELECT status FROM campaign_sends WHERE tenant_id = :t"),
            {"t": corp.tenant_id},
        )
    assert status == "sent"


async def _wecom_contacts(
    runtime: Runtime, corp: WeComTenant, staff: str, n: int
) -> list[uuid.UUID]:
    """n contacts followed by `staff`, with their external_userids."""
    ids = [uuid.uuid4() for _ in range(n)]
    cipher = runtime.cipher
    async with unit_of_work(runtime.sessionmaker) as session:
        names = name_context(corp.tenant_id)
        externals = identity_context(corp.tenant_id, "external_userid")
        session.add_all(
            Contact(
                id=c,
                tenant_id=corp.tenant_id,
                name_enc=cipher.encrypt(f"c{i}", context=names),
                owner_staff_userid=staff,
            )
            for i, c in enumerate(ids)
        )
        await session.flush()
        session.add_all(
            ContactIdentity(
                tenant_id=corp.tenant_id,
                contact_id=c,
                kind="external_userid",
                value_bidx=cipher.blind_index(
                    f"wm{staff}{i}", kind="external_userid", tenant=str(corp.tenant_id)
                ),
                value_enc=cipher.encrypt(f"wm{staff}{i}", context=externals),
                source="wecom",
            )
            for i, c in enumerate(ids)
        )
        session.add_all(
            ContactFollow(
                tenant_id=corp.tenant_id, contact_id=c, staff_userid=staff, status="active"
            )
            for c in ids
        )
    return ids


MASS = {
    "name": "mass",
    "trigger": {"type": "manual"},
    "steps": [
        {
            "id": "offer",
            "type": "action",
            "action": "send",
            "channel": "wecom_single",
            "content": {"text": "双十二 五折"},
        }
    ],
}


async def _enrol_all(
    client: httpx.AsyncClient, corp: WeComTenant, cid: int, ids: list[uuid.UUID]
) -> None:
    # Whatever the hour the test runs at: no quiet hours.
    put = await client.put(
        "/v1/campaigns/settings", json={"quiet_hours": None}, headers=bearer(corp.admin)
    )
    assert put.status_code == 200, put.text
    for start in range(0, len(ids), 10_000):
        answer = await client.post(
            f"/v1/campaigns/{cid}/enrol",
            json={"contact_ids": [str(i) for i in ids[start : start + 10_000]]},
            headers=bearer(corp.admin),
        )
        assert answer.status_code == 200, answer.text


async def _sends(runtime: Runtime, cid: int) -> dict[str, int]:
    async with runtime.engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT status || coalesce(':' || reason, ''), count(*) FROM campaign_sends "
                "WHERE campaign_id = :c GROUP BY 1"
            ),
            {"c": cid},
        )
        return {r[0]: int(r[1]) for r in rows}


async def test_25000_recipients_of_one_staff_member_make_3_calls_followed_to_the_end(
    committed: Runtime,
    committed_client: httpx.AsyncClient,
    corp: WeComTenant,
    fake: FakeWeCom,
    moving: Moving,
) -> None:
    ids = await _wecom_contacts(committed, corp, "lisi", 25_000)
    small = await _wecom_contacts(committed, corp, "wangwu", 3)
    cid = await _launch(committed_client, corp, MASS)
    await _enrol_all(committed_client, corp, cid, ids + small)
    await JourneyRunner(committed).drain()
    queue = WeComMassQueue(committed)
    await queue.drain()
    calls = [b for name, b in fake.messaging.requests if name == "add_msg_template"]
    by_sender = sorted((b["sender"], len(b["external_userid"])) for b in calls)
    assert by_sender == [("lisi", 5_000), ("lisi", 10_000), ("lisi", 10_000), ("wangwu", 3)]
    assert len({r for b in calls for r in b["external_userid"]}) == 25_003, "none dropped"
    assert await _sends(committed, cid) == {"sending": 25_003}
    async with committed.engine.connect() as conn:
        tasks = (
            await conn.execute(
                text(
                    "SELECT staff_userid, status FROM campaign_staff_tasks "
                    "WHERE campaign_id = :c AND kind = 'wecom_mass'"
                ),
                {"c": cid},
            )
        ).all()
    assert sorted(t[0] for t in tasks) == ["lisi", "lisi", "lisi", "wangwu"]
    # wangwu confirms: one recipient is no longer a friend, one over quota (not a failure).
    [theirs] = fake.messaging.of_sender("wangwu")
    _, second, third = theirs.recipients
    fake.messaging.confirm(theirs.msgid, {second: 2, third: 3})
    moving.now += timedelta(seconds=61)
    await queue.drain()
    found = await _sends(committed, cid)
    assert found == {
        "sending": 25_000,
        "delivered": 1,
        "failed:not_friend": 1,
        "skipped:quota": 1,
    }
    # lisi does not confirm: reminded after an hour, at most 3 times a day, then cancelled.
    for _ in range(6):
        moving.now += timedelta(hours=1, seconds=1)
        await queue.drain()
    reminded = {m.msgid: m.reminders for m in fake.messaging.of_sender("lisi")}
    assert set(reminded.values()) == {3}
    moving.now += timedelta(hours=19)
    await queue.drain()
    assert all(m.cancelled for m in fake.messaging.of_sender("lisi"))
    assert (await _sends(committed, cid))["failed:not_confirmed"] == 25_000
    async with committed.engine.connect() as conn:
        statuses = dict(
            (
                await conn.execute(
                    text(
                        "SELECT staff_userid, array_agg(DISTINCT status) FROM "
                        "campaign_staff_tasks WHERE campaign_id = :c GROUP BY 1"
                    ),
                    {"c": cid},
                )
            ).all()
        )
    assert statuses == {"lisi": ["overdue"], "wangwu": ["confirmed"]}
    assert fake.messaging.calls["add_msg_template"] == 4, "never called again"


async def test_a_lost_answer_is_looked_up_before_any_second_mass_message(
    committed: Runtime,
    committed_client: httpx.AsyncClient,
    corp: WeComTenant,
    fake: FakeWeCom,
    moving: Moving,
) -> None:
    ids = await _wecom_contacts(committed, corp, "lisi", 20)
    cid = await _launch(committed_client, corp, MASS)
    await _enrol_all(committed_client, corp, cid, ids)
    await JourneyRunner(committed).drain()
    fake.messaging.lose_answers("add_msg_template")
    queue = WeComMassQueue(committed)
    await queue.drain()
    assert fake.messaging.calls["add_msg_template"] == 1
    # The lease runs out: the retry finds the message WeCom made and adopts it.
    moving.now += timedelta(seconds=61)
    await queue.drain()
    assert fake.messaging.calls["add_msg_template"] == 1, "no second mass message"
    assert fake.messaging.calls["get_groupmsg_list_v2"] >= 1
    [message] = fake.messaging.of_sender("lisi")
    fake.messaging.confirm(message.msgid)
    moving.now += timedelta(seconds=61)
    await queue.drain()
    assert await _sends(committed, cid) == {"delivered": 20}


async def test_a_worker_killed_before_or_during_the_call_makes_one_call_per_recipient(
    committed: Runtime,
    committed_client: httpx.AsyncClient,
    corp: WeComTenant,
    fake: FakeWeCom,
    scrm_env: dict[str, str],
) -> None:
    ids = await _wecom_contacts(committed, corp, "lisi", 30)
    cid = await _launch(committed_client, corp, MASS)
    await _enrol_all(committed_client, corp, cid, ids)
    await JourneyRunner(committed).drain()
    # Killed between the send rows and the call: the job is written, never called.
    await WeComMassQueue(committed).bundle()
    assert fake.messaging.calls["add_msg_template"] == 0
    # A real worker takes it, and is SIGKILLed while WeCom holds the answer.
    fake.messaging.hold("add_msg_template")
    env = {
        **scrm_env,
        "SCRM_WECOM_API_BASE": fake.base_url,
        "SCRM_CAMPAIGNS_WECOM_LEASE_SECONDS": "1",
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "worker", "--service", "campaigns"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        await wait_until(fake.messaging.holding.is_set, "the worker's add_msg_template")
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
    fake.messaging.release()
    assert fake.messaging.calls["add_msg_template"] == 1
    # Later than the killed attempt's lease (1 s): on the service's clock, not by waiting.
    with clock.use(lambda: datetime.now(UTC) + timedelta(seconds=5)):
        await WeComMassQueue(committed).drain()
    assert fake.messaging.calls["add_msg_template"] == 1, "one call per recipient"
    [message] = fake.messaging.of_sender("lisi")
    assert sorted(message.recipients) == sorted(f"wmlisi{i}" for i in range(30))
    async with committed.engine.connect() as conn:
        adopted = await conn.scalar(
            text("SELECT msgid FROM campaign_wecom_jobs WHERE campaign_id = :c"), {"c": cid}
        )
    assert adopted == message.msgid


async def test_the_welcome_lane_sends_ahead_of_the_callback_backlog_and_only_once(
    committed: Runtime,
    committed_client: httpx.AsyncClient,
    corp: WeComTenant,
    fake: FakeWeCom,
) -> None:
    fake.add_staff("zhangsan", "张三")
    journey = {
        "name": "welcome",
        "trigger": {"type": "contact.added", "states": ["qr1"]},
        "steps": [
            {
                "id": "hello",
                "type": "action",
                "action": "send",
                "channel": "wecom_welcome",
                "content": {"text": "欢迎! 新人券已到账"},
                "next": "later",
            },
            {"id": "later", "type": "wait", "days": 1},
        ],
    }
    cid = await _launch(committed_client, corp, journey)
    lane = WelcomeLane(committed)
    await lane.step()  # started before the callbacks
    for external, state, code in (("wmL1", "qr1", "LANE-1"), ("wmL2", "other", "LANE-2")):
        xml = contact_event(
            "add_external_contact", external=external, State=state, WelcomeCode=code
        )
        assert (await committed_client.post(**corp.callback(xml))).status_code == 200
    # The users service has applied nothing yet: the lane has the code from the callback.
    assert await lane.drain() == 1
    assert [w["welcome_code"] for w in fake.messaging.welcomes] == ["LANE-1"], "sent at once"
    # Then the backlog is applied: the journey enrols the contact, its step finds the
    # welcome planned under the same key and sends nothing more.
    await _settle(committed)
    await lane.drain()
    assert fake.messaging.calls["send_welcome_msg"] == 1
    async with committed.engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT s.status, s.contact_id IS NOT NULL, s.enrolment_id IS NOT NULL, "
                    "e.step_id, e.status FROM campaign_sends s "
                    "JOIN campaign_enrolments e ON e.id = s.enrolment_id "
                    "WHERE s.campaign_id = :c"
                ),
                {"c": cid},
            )
        ).all()
    assert [tuple(r) for r in rows] == [("sent", True, True, "later", "waiting")]


async def test_staff_are_told_of_their_tasks_and_of_overdue_ones_once(
    committed: Runtime,
    committed_client: httpx.AsyncClient,
    corp: WeComTenant,
    fake: FakeWeCom,
    moving: Moving,
) -> None:
    (contact,) = await _wecom_contacts(committed, corp, "lisi", 1)
    journey = {
        "name": "call them",
        "trigger": {"type": "manual"},
        "steps": [
            {
                "id": "call",
                "type": "action",
                "action": "create_task",
                "title": "Call {{name}}",
                "due_in_hours": 4,
            }
        ],
    }
    cid = await _launch(committed_client, corp, journey)
    await _enrol_all(committed_client, corp, cid, [contact])
    put = await committed_client.put(
        "/v1/campaigns/settings", json={"wecom_agent_id": 1000002}, headers=bearer(corp.admin)
    )
    assert put.status_code == 200, put.text
    await JourneyRunner(committed).drain()
    notices = StaffNotices(committed)
    await notices.drain()
    await notices.drain()
    sent = [(m["touser"], m["agentid"], m["text"]["content"]) for m in fake.messaging.app_messages]
    assert len(sent) == 1 and sent[0][:2] == ("lisi", 1000002)
    assert sent[0][2].startswith("新任务: Call c0")
    moving.now += timedelta(hours=4, seconds=1)
    await notices.drain()
    await notices.drain()
    overdue = [m["text"]["content"] for m in fake.messaging.app_messages[1:]]
    assert len(overdue) == 1 and overdue[0].startswith("任务已逾期: Call c0")


async def test_the_wecom_quota_skips_or_postpones_with_its_reason(
    committed: Runtime,
    committed_client: httpx.AsyncClient,
    corp: WeComTenant,
    fake: FakeWeCom,
    moving: Moving,
) -> None:
    contacts = await _wecom_contacts(committed, corp, "lisi", 2)
    journey = {
        "name": "twice a day",
        "trigger": {"type": "manual"},
        "reentry": {"policy": "every_time"},
        "steps": [
            {
                "id": "first",
                "type": "action",
                "action": "send",
                "channel": "wecom_single",
                "content": {"text": "one"},
                "next": "second",
            },
            {
                "id": "second",
                "type": "action",
                "action": "send",
                "channel": "wecom_single",
                "content": {"text": "two"},
                "over_quota": "postpone",
                "next": "third",
            },
            {
                "id": "third",
                "type": "action",
                "action": "send",
                "channel": "wecom_single",
                "content": {"text": "three"},
            },
        ],
    }
    cid = await _launch(committed_client, corp, journey)
    await _enrol_all(committed_client, corp, cid, contacts)  # quiet hours off
    put = await committed_client.put(
        "/v1/campaigns/settings",
        json={"quiet_hours": None, "wecom_monthly_quota": 2},
        headers=bearer(corp.admin),
    )
    assert put.status_code == 200
    await JourneyRunner(committed).drain()
    # One a day from the same staff member: the second waits for tomorrow.
    found = await _sends(committed, cid)
    assert found == {"planned": 2, "deferred:quota": 2}
    async with committed.engine.connect() as conn:
        due = await conn.scalar(
            text(
                "SELECT min(due_at) FROM campaign_sends WHERE campaign_id = :c "
                "AND step_id = 'second'"
            ),
            {"c": cid},
        )
    tz = ZoneInfo("Asia/Shanghai")
    assert due == datetime.combine(
        moving.now.astimezone(tz).date() + timedelta(days=1), time(0), tz
    )
    moving.now = due + timedelta(seconds=1)
    await JourneyRunner(committed).drain()
    # The monthly quota (2) is reached by the second: the third is skipped, not sent.
    assert await _sends(committed, cid) == {"planned": 4, "skipped:quota": 2}


async def test_group_joined_starts_a_journey_whose_group_message_goes_to_that_group(
    committed: Runtime,
    committed_client: httpx.AsyncClient,
    corp: WeComTenant,
    fake: FakeWeCom,
    moving: Moving,
) -> None:
    a, b, c = await _wecom_contacts(committed, corp, "lisi", 3)
    journey = {
        "name": "group tutorial",
        "trigger": {"type": "group.joined", "chat_ids": ["wrVIP"]},
        "steps": [
            {
                "id": "tutorial",
                "type": "action",
                "action": "send",
                "channel": "wecom_group",
                "content": {"text": "群里的新朋友: 使用教程在这里"},
            }
        ],
    }
    cid = await _launch(committed_client, corp, journey)
    await _enrol_all(committed_client, corp, cid, [])  # quiet hours off
    async with unit_of_work(committed.sessionmaker) as session:
        await publish_many(
            session,
            [
                ("group.joined", {"chat_id": "wrVIP", "contact_id": str(a)}, corp.tenant_id),
                ("group.joined", {"chat_id": "wrVIP", "contact_id": str(b)}, corp.tenant_id),
                ("group.joined", {"chat_id": "wrOther", "contact_id": str(c)}, corp.tenant_id),
            ],
        )
    await relay_all(committed)
    await work_until_idle(committed, "campaigns")
    await JourneyRunner(committed).drain()
    await WeComMassQueue(committed).drain()
    calls = [b for n, b in fake.messaging.requests if n == "add_msg_template"]
    assert [(b["chat_type"], b["sender"], b["chat_id_list"]) for b in calls] == [
        ("group", "lisi", ["wrVIP"])
    ], "one group message for the two who joined that group, none for the other"
    [message] = fake.messaging.of_sender("lisi")
    fake.messaging.confirm(message.msgid)
    moving.now += timedelta(seconds=61)
    await WeComMassQueue(committed).drain()
    assert await _sends(committed, cid) == {"delivered": 2}
