"""Attribution through WeCom channel codes, on the real bus: the first valid one wins
(once, however often the event comes), the inviter's inviter is kept for chains, and
self-invites, contacts known before the code, cycles and unknown codes are refused
with their reason."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text, update

from services.points.referrals import attribution
from services.users.models import Contact
from services.users.settings import users_settings
from shared.db import unit_of_work
from shared.events import publish_many
from shared.relay import DELIVER_JOB
from shared.runtime import Runtime
from tests.clock import wait_until
from tests.helpers import bearer, make_key, make_tenant
from tests.shared.bus_support import relay_all, schedule_and_work, work_until_idle
from tests.users.fake_wecom import FakeWeCom
from tests.users.support import CORP_ID, wecom_tenant


async def _contact(
    runtime: Runtime, tenant_id: uuid.UUID, *, created: datetime | None = None
) -> uuid.UUID:
    contact = uuid.uuid4()
    async with unit_of_work(runtime.sessionmaker) as session:
        session.add(Contact(id=contact, tenant_id=tenant_id))
        if created is not None:
            await session.flush()
            await session.execute(
                update(Contact).where(Contact.id == contact).values(created_at=created)
            )
    return contact


async def _code(client: httpx.AsyncClient, h: dict[str, str], contact: uuid.UUID) -> str:
    answer = await client.get(f"/v1/points/referrals/codes/{contact}", headers=h)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["code"])


def _added(contact: uuid.UUID, state: str | None) -> dict[str, Any]:
    return {
        "contact_id": str(contact),
        "occurred_at": "2026-12-01T10:00:00+08:00",
        "staff_userid": "zhangsan",
        "state": state,
        "welcome_code": None,
        "new_contact": True,
    }


async def _referrals(runtime: Runtime, tenant_id: uuid.UUID) -> list[tuple[Any, ...]]:
    async with runtime.engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT invitee_id, inviter_id, level2_inviter_id, status, reason, source "
                "FROM referrals WHERE tenant_id = :t ORDER BY id"
            ),
            {"t": tenant_id},
        )
        return [tuple(r) for r in rows]


async def test_channel_codes_attribute_once_with_their_chain_and_refusals(
    committed: Runtime, committed_client: httpx.AsyncClient
) -> None:
    async with unit_of_work(committed.sessionmaker) as session:
        tenant = await make_tenant(session)
        other = await make_tenant(session)
        h = bearer(await make_key(session, tenant, "operator"))
    old = await _contact(committed, tenant.id, created=datetime.now(UTC) - timedelta(days=30))
    alice = await _contact(committed, tenant.id)
    alice_code = await _code(committed_client, h, alice)
    bob = await _contact(committed, tenant.id)
    bob_code = await _code(committed_client, h, bob)
    carol = await _contact(committed, tenant.id)
    stranger = await _contact(committed, other.id)
    events = [
        ("contact.added", _added(bob, f"ref-{alice_code}")),  # bob came through alice
        ("contact.added", _added(carol, f"ref-{bob_code}")),  # carol through bob: level 2 alice
        ("contact.added", _added(carol, f"ref-{alice_code}")),  # a second invite: refused
        ("contact.added", _added(alice, f"ref-{alice_code}")),  # self
        ("contact.added", _added(alice, f"ref-{bob_code}")),  # a cycle
        ("contact.added", _added(old, f"ref-{alice_code}")),  # known before the code
        ("contact.added", _added(stranger, f"ref-{alice_code}")),  # another tenant's
        ("contact.added", _added(old, "ref-NOSUCHCODE")),
        ("contact.added", _added(old, "live-1111")),  # not an invite: never delivered
    ]
    async with unit_of_work(committed.sessionmaker) as session:
        await publish_many(
            session,
            [
                (t, p, other.id if p["contact_id"] == str(stranger) else tenant.id)
                for t, p in events
            ],
        )
    await relay_all(committed)
    await work_until_idle(committed, "points")
    # Delivered again: nothing more.
    async with committed.engine.connect() as conn:
        ids = [
            r[0]
            for r in await conn.execute(
                text("SELECT id FROM outbox_events WHERE type = 'contact.added' ORDER BY id")
            )
        ]
    await committed.redis.enqueue_job(DELIVER_JOB, ids, _queue_name=committed.queue_name("points"))
    await work_until_idle(committed, "points")
    assert await _referrals(committed, tenant.id) == [
        (bob, alice, None, "pending", None, "wecom"),
        (carol, bob, alice, "pending", None, "wecom"),
        (carol, alice, None, "refused", "already_attributed", "wecom"),
        (alice, alice, None, "refused", "self_invite", "wecom"),
        (alice, bob, None, "refused", "cycle", "wecom"),
        (old, alice, None, "refused", "already_known", "wecom"),
        (old, None, None, "refused", "unknown_code", "wecom"),
    ]
    assert await _referrals(committed, other.id) == [
        (stranger, None, None, "refused", "unknown_code", "wecom")
    ], "a code of another tenant is unknown"


async def test_concurrent_batches_neither_deadlock_nor_attribute_an_invitee_twice(
    committed: Runtime, committed_client: httpx.AsyncClient
) -> None:
    """Two batches at once: over the same inviters in opposite orders they take turns
    (the inviters are locked sorted); with different inviters for one invitee, the
    one that commits first wins and the other is recorded as refused."""
    async with unit_of_work(committed.sessionmaker) as session:
        tenant = await make_tenant(session)
        h = bearer(await make_key(session, tenant, "operator"))
    alice, bob, carol = [await _contact(committed, tenant.id) for _ in range(3)]
    codes = {c: await _code(committed_client, h, c) for c in (alice, bob, carol)}
    x1, x2, y1, y2, z = [await _contact(committed, tenant.id) for _ in range(5)]
    at = datetime.now(UTC)

    def asked(invitee: uuid.UUID, inviter: uuid.UUID) -> attribution.Request:
        return attribution.Request(
            invitee, codes[inviter], source="event", event_key=f"t:{uuid.uuid4()}", at=at
        )

    first = [asked(x1, alice), asked(x2, bob), asked(z, alice)]
    second = [asked(y1, bob), asked(y2, alice)]
    third = [asked(z, carol)]  # another inviter: no lock in common with the first
    started, release = asyncio.Event(), asyncio.Event()
    results: dict[str, list[attribution.Attribution]] = {}

    async def hold_first() -> None:
        async with unit_of_work(committed.sessionmaker) as session:
            results["first"] = await attribution.attribute_many(session, tenant.id, first)
            started.set()
            await release.wait()

    async def run(name: str, requests: list[attribution.Request]) -> None:
        await started.wait()
        async with unit_of_work(committed.sessionmaker) as session:
            results[name] = await attribution.attribute_many(session, tenant.id, requests)

    async def both_waiting() -> bool:
        async with committed.engine.connect() as conn:
            waiting = await conn.scalar(text("SELECT count(*) FROM pg_locks WHERE NOT granted"))
        return bool(waiting and waiting >= 2)

    tasks = [
        asyncio.create_task(hold_first()),
        asyncio.create_task(run("second", second)),
        asyncio.create_task(run("third", third)),
    ]
    await started.wait()
    await wait_until(both_waiting, "the second and third batches waiting on the first")
    release.set()
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
    assert [r.status for r in results["first"]] == ["pending"] * 3
    assert [r.status for r in results["second"]] == ["pending"] * 2
    assert [(r.status, r.reason) for r in results["third"]] == [("refused", "already_attributed")]
    found = await _referrals(committed, tenant.id)
    assert sorted((r[0], r[3]) for r in found if r[0] == z) == sorted(
        [(z, "pending"), (z, "refused")]
    )
    async with committed.engine.connect() as conn:
        welcome = await conn.scalar(
            text(
                "SELECT count(*) FROM referral_rewards WHERE tenant_id = :t "
                "AND purpose = 'welcome' AND contact_id = :z"
            ),
            {"t": tenant.id, "z": z},
        )
        transitions = await conn.execute(
            text(
                "SELECT r.status, t.to_status, t.cause FROM referral_transitions t "
                "JOIN referrals r ON r.id = t.referral_id WHERE r.invitee_id = :z ORDER BY t.id"
            ),
            {"z": z},
        )
        assert [tuple(t) for t in transitions] == [
            ("pending", "pending", "attributed"),
            ("refused", "refused", "already_attributed"),
        ]
    assert welcome == 1


async def test_an_inviter_gets_a_wecom_channel_code_naming_them(
    committed: Runtime,
    committed_client: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with FakeWeCom(corp_id=CORP_ID, secret="referral-app-secret") as fake:
        monkeypatch.setenv("SCRM_WECOM_API_BASE", fake.base_url)
        users_settings.cache_clear()
        try:
            corp = await wecom_tenant(committed, app_secret="referral-app-secret")
            plain = await make_tenant_with_key(committed)
            inviter = uuid.uuid4()
            alone = uuid.uuid4()
            async with unit_of_work(committed.sessionmaker) as session:
                session.add(
                    Contact(id=inviter, tenant_id=corp.tenant_id, owner_staff_userid="zhangsan")
                )
                session.add(Contact(id=alone, tenant_id=plain[0], owner_staff_userid="lisi"))
            h = bearer(corp.admin)
            first = await committed_client.get(f"/v1/points/referrals/codes/{inviter}", headers=h)
            assert first.status_code == 200 and first.json()["qr_code"] is None
            assert (
                await committed_client.get(f"/v1/points/referrals/codes/{alone}", headers=plain[1])
            ).status_code == 200
            await schedule_and_work(committed, "points")
            made = await committed_client.get(f"/v1/points/referrals/codes/{inviter}", headers=h)
            code, qr = made.json()["code"], made.json()["qr_code"]
            assert qr is not None and qr.startswith("https://wework.qpic.cn/fake/contactway/")
            [way] = fake.messaging.contact_ways.values()
            assert way["state"] == f"ref-{code}" and way["user"] == ["zhangsan"]
            async with committed.engine.connect() as conn:
                errors = dict(
                    (
                        await conn.execute(text("SELECT tenant_id, qr_error FROM referral_codes"))
                    ).all()
                )
            assert errors == {corp.tenant_id: None, plain[0]: "no_wecom"}
        finally:
            users_settings.cache_clear()


async def make_tenant_with_key(runtime: Runtime) -> tuple[uuid.UUID, dict[str, str]]:
    async with unit_of_work(runtime.sessionmaker) as session:
        tenant = await make_tenant(session)
        return tenant.id, bearer(await make_key(session, tenant, "operator"))
