"""The users worker claims stored events itself: batches, failures, dead letters, kills."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.users import processing
from services.users.consumer import HANDLER, InboundConsumer
from services.users.flood import HOLD_SECONDS, WINDOW_SECONDS, flood_key
from services.users.ingest import Inbound, InboundWriter
from services.users.repository import StoredEvent
from services.users.wecom_crypto import parse_xml
from services.users.wecom_events import dedupe_key, event_type
from shared.runtime import Runtime
from tests.clock import FakeClock, wait_until
from tests.helpers import bearer
from tests.users.support import WeComTenant, contact_event, post, wecom_tenant


@pytest.fixture
async def corp(committed: Runtime) -> WeComTenant:
    return await wecom_tenant(committed)


def order(event_id: str, phone: str) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "type": "order.paid",
        "occurred_at": "2026-11-20T10:00:00+08:00",
        "contact": {"phone": phone},
        "properties": {"order_id": f"SO-{event_id}", "amount_fen": 100},
    }


async def value(runtime: Runtime, sql: str, **params: Any) -> Any:
    async with runtime.engine.connect() as conn:
        return await conn.scalar(text(sql), params)


async def applied(runtime: Runtime) -> int:
    return int(await value(runtime, "SELECT count(*) FROM contact_events"))


async def send_orders(
    client: httpx.AsyncClient, corp: WeComTenant, ids: list[str], phones: int
) -> None:
    for start in range(0, len(ids), 200):
        events = [order(e, f"1380000{int(e[1:]) % phones:04d}") for e in ids[start : start + 200]]
        response = await post(client, corp.signed({"events": events}))
        assert response.status_code == 202, response.text


async def test_a_failing_event_is_retried_alone_dead_lettered_and_replayed(
    committed: Runtime,
    committed_client: httpx.AsyncClient,
    corp: WeComTenant,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    healed = False
    apply = processing.apply_inbound

    async def broken_for_e2(session: AsyncSession, row: StoredEvent) -> str:
        if row.dedupe_key == "e2" and not healed:
            raise RuntimeError("cannot apply e2")
        return await apply(session, row)

    monkeypatch.setattr(processing, "apply_inbound", broken_for_e2)
    await send_orders(committed_client, corp, ["e1", "e2", "e3", "e4"], phones=4)
    metrics = (await committed_client.get("/metrics")).text
    assert "scrm_inbound_pending 4.0" in metrics
    status = await committed_client.get("/v1/users/status", headers=bearer(corp.admin))
    assert status.json()["inbound_pending"] == 4
    consumer = InboundConsumer(committed, batch_size=10)
    # The batch fails as a whole; its events go one by one and only e2 fails.
    assert await consumer.step() == 4
    assert await value(committed, "SELECT count(*) FROM contact_events") == 3
    row = await value(
        committed,
        "SELECT row(attempts, outcome, last_error, retry_at IS NOT NULL)::text"
        " FROM inbound_events WHERE dedupe_key = 'e2'",
    )
    assert row == '(1,,"RuntimeError: cannot apply e2",t)', "due again later"

    # Retried with backoff (0.02 s, then 0.08 s here) until the last attempt.
    async def dead_lettered() -> bool:
        await consumer.drain()
        return bool(await value(committed, "SELECT count(*) FROM dead_letters"))

    await wait_until(dead_lettered, "e2 dead-lettered after its last attempt", every=0.05)
    state = await value(
        committed,
        "SELECT row(attempts, outcome, processed_at IS NULL, retry_at = 'infinity')::text"
        " FROM inbound_events WHERE dedupe_key = 'e2'",
    )
    assert state == f"({committed.settings.event_max_attempts},dead,t,t)"
    assert await consumer.drain() == 0, "a dead letter is not claimed again"
    metrics = (await committed_client.get("/metrics")).text
    assert "scrm_inbound_pending 0.0" in metrics and "scrm_dlq_size 1.0" in metrics
    status = await committed_client.get("/v1/users/status", headers=bearer(corp.admin))
    assert (status.json()["inbound_pending"], status.json()["dead_letters"]) == (0, 1)

    listed = (await committed_client.get("/v1/admin/dlq", headers=bearer(corp.admin))).json()[
        "items"
    ]
    assert len(listed) == 1
    letter = listed[0]
    assert (letter["service"], letter["handler"], letter["status"]) == ("users", HANDLER, "dead")
    assert letter["attempts"] == committed.settings.event_max_attempts
    assert "cannot apply e2" in letter["last_error"]

    healed = True
    replayed = await committed_client.post(
        f"/v1/admin/dlq/{letter['id']}/replay", headers=bearer(corp.admin)
    )
    assert replayed.status_code == 200 and replayed.json()["status"] == "replayed"
    assert await consumer.drain() == 1
    assert await value(committed, "SELECT count(*) FROM contact_events") == 4
    assert (
        await value(committed, "SELECT count(*) FROM outbox_events WHERE type = 'order.paid'") == 4
    )
    assert (
        await value(committed, "SELECT count(*) FROM inbound_events WHERE processed_at IS NULL")
        == 0
    )


async def test_concurrent_workers_share_a_backlog_and_apply_each_event_once(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant
) -> None:
    # 600 orders of 40 people: concurrent batches keep meeting on the same contacts.
    ids = [f"o{i}" for i in range(600)]
    await send_orders(committed_client, corp, ids, phones=40)
    consumers = [InboundConsumer(committed, batch_size=25) for _ in range(4)]
    handled = await asyncio.gather(*(c.drain() for c in consumers))
    assert sum(handled) >= 600
    assert (
        await value(committed, "SELECT count(*) FROM contacts WHERE merged_into_id IS NULL") == 40
    )
    assert await value(committed, "SELECT count(*) FROM contact_events") == 600
    assert (
        await value(committed, "SELECT count(*) FROM outbox_events WHERE type = 'order.paid'")
        == 600
    )
    assert (
        await value(committed, "SELECT count(*) FROM inbound_events WHERE processed_at IS NOT NULL")
        == 600
    )
    assert await value(committed, "SELECT count(*) FROM dead_letters") == 0


async def test_a_running_worker_wakes_on_the_stored_events_notification(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant
) -> None:
    async def applied_is(n: int) -> bool:
        return await applied(committed) == n

    stop = asyncio.Event()
    # No polling: only the NOTIFY of a stored batch can wake it.
    consumer = InboundConsumer(committed, idle_poll_seconds=3600)
    running = asyncio.create_task(consumer.run(stop))
    try:
        await send_orders(committed_client, corp, ["w0"], phones=1)
        await wait_until(lambda: applied_is(1), "the first event applied")
        # Listening and idle now: the next event has to wake it.
        await send_orders(committed_client, corp, ["w1"], phones=1)
        await wait_until(lambda: applied_is(2), "woken by the notification")
    finally:
        stop.set()
        await asyncio.wait_for(running, timeout=60)


@pytest.mark.slow
async def test_worker_killed_midway_loses_and_repeats_nothing(
    committed: Runtime,
    committed_client: httpx.AsyncClient,
    corp: WeComTenant,
    scrm_env: dict[str, str],
) -> None:
    """A real `scrm worker --service users` is SIGKILLed with batches in flight."""
    env = {
        **scrm_env,
        "SCRM_EXTRA_TASK_MODULES": "tests.shared.bus_handlers,tests.users.slow_inbound",
    }
    command = [sys.executable, "-m", "shared.cli", "worker", "--service", "users"]
    total = 400

    async def applied_at_least(n: int) -> bool:
        return await applied(committed) >= n

    async def nothing_pending() -> bool:
        pending = "SELECT count(*) FROM inbound_events WHERE processed_at IS NULL"
        return not await value(committed, pending)

    first = subprocess.Popen(command, env=env)
    try:
        await send_orders(committed_client, corp, [f"k{i}" for i in range(total)], phones=50)
        await wait_until(lambda: applied_at_least(50), "the worker applied some", every=0.05)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    done_by_first = await value(committed, "SELECT count(*) FROM contact_events")
    assert 50 <= done_by_first < total, "killed with work in flight"
    second = subprocess.Popen(command, env=env)
    try:
        await wait_until(nothing_pending, "the second worker finished", every=0.05)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=60)
    assert await value(committed, "SELECT count(*) FROM contact_events") == total
    assert (
        await value(committed, "SELECT count(*) FROM outbox_events WHERE type = 'order.paid'")
        == total
    )
    assert await value(committed, "SELECT count(*) FROM dead_letters") == 0


async def test_callbacks_stored_with_their_reading_by_earlier_versions_still_apply(
    committed: Runtime, corp: WeComTenant
) -> None:
    xml = contact_event("add_external_contact", external="wmOldFormat")
    msg = parse_xml(xml)
    writer = InboundWriter(committed)
    try:
        stored = await writer.store(
            [
                Inbound(
                    corp.tenant_id,
                    "wecom",
                    dedupe_key(msg, xml),
                    event_type(msg),
                    {"msg": msg, "xml": xml},
                )
            ]
        )
    finally:
        await writer.close()
    assert stored == [True]
    assert await InboundConsumer(committed).drain() == 1
    assert (
        await value(committed, "SELECT outcome FROM inbound_events WHERE processed_at IS NOT NULL")
        == "contact.add_external_contact"
    )
    assert await value(committed, "SELECT count(*) FROM contacts") == 1


async def test_a_flood_is_reported_for_this_machine_for_a_window(
    committed: Runtime, corp: WeComTenant
) -> None:
    key = flood_key(committed)
    await committed.redis.delete(key)
    clock = FakeClock()
    # An API process storing more than its threshold in a window says so, for a window.
    writer = InboundWriter(committed, flood_events_per_second=100, clock=clock)
    ttl = 0
    try:
        # The report lives one real window in Redis: should this run stall for longer
        # than that before looking, the next flooded window is reported again.
        for window in range(20):
            for n in range(3):  # 150 events within one window of the writer's clock
                items = [
                    Inbound(corp.tenant_id, "event", f"x{window}-{n}-{i}", "checkin", {})
                    for i in range(50)
                ]
                await writer.store(items)
            looked_until = asyncio.get_running_loop().time() + WINDOW_SECONDS
            while (ttl := await committed.redis.pttl(key)) <= 0:
                if asyncio.get_running_loop().time() > looked_until:
                    break
                await asyncio.sleep(0.01)
            if ttl > 0:
                break
            clock.advance(WINDOW_SECONDS)
    finally:
        await writer.close()
        await committed.redis.delete(key)
    assert 0 < ttl <= WINDOW_SECONDS * 1000


async def test_a_flood_holds_this_machines_workers_to_one_batch_per_hold(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant
) -> None:
    key = flood_key(committed)
    await send_orders(committed_client, corp, [f"h{i}" for i in range(40)], phones=40)
    await committed.redis.set(key, b"1")  # a flood, as this machine's API reports it
    clock = FakeClock()
    stop = asyncio.Event()
    consumer = InboundConsumer(committed, batch_size=10, concurrency=1, sleep=clock.sleep)
    running = asyncio.create_task(consumer.run(stop))
    try:
        await clock.until_sleeping()
        assert await applied(committed) == 0, "held back before its first batch"
        for batches in (1, 2):
            clock.advance(HOLD_SECONDS)
            await clock.until_sleeping()
            assert await applied(committed) == 10 * batches, "one batch (of 10) per hold"
        await committed.redis.delete(key)  # the flood is over
        clock.advance(HOLD_SECONDS)

        async def all_applied() -> bool:
            return await applied(committed) == 40

        await wait_until(all_applied, "full speed again after the flood")
        assert clock.slept == [HOLD_SECONDS] * 3, "no hold once the flood is over"
    finally:
        stop.set()
        await asyncio.wait_for(running, timeout=60)
        await committed.redis.delete(key)


async def test_a_flood_on_another_machine_holds_no_worker_here_back(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant
) -> None:
    elsewhere = flood_key(committed, f"not-{socket.gethostname()}")
    assert elsewhere != flood_key(committed)
    await send_orders(committed_client, corp, [f"h{i}" for i in range(40)], phones=40)
    await committed.redis.set(elsewhere, b"1")  # that machine's API absorbs a flood
    clock = FakeClock()
    stop = asyncio.Event()
    consumer = InboundConsumer(committed, batch_size=10, concurrency=1, sleep=clock.sleep)
    running = asyncio.create_task(consumer.run(stop))
    try:

        async def all_applied() -> bool:
            return await applied(committed) == 40

        await wait_until(all_applied, "the backlog applied at full speed")
        assert clock.slept == [], "never held back"
    finally:
        stop.set()
        await asyncio.wait_for(running, timeout=60)
        await committed.redis.delete(elsewhere)
