"""Dead letters say what died, and count its attempts exactly, up to the maximum."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections import Counter
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.users import processing
from services.users.consumer import HANDLER, InboundConsumer
from services.users.repository import StoredEvent
from shared.db import unit_of_work
from shared.events import publish
from shared.relay import DELIVER_JOB
from shared.runtime import Runtime
from tests.helpers import bearer, make_key, make_tenant, run_scrm
from tests.shared.bus_support import ensure_test_tables, relay_all, work_until_idle
from tests.users.support import WeComTenant, post, wecom_tenant


@pytest.fixture
async def corp(committed: Runtime) -> WeComTenant:
    return await wecom_tenant(committed)


def order(event_id: str) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "type": "order.paid",
        "occurred_at": "2026-11-20T10:00:00+08:00",
        "contact": {"phone": "13812341234"},
        "properties": {"order_id": f"SO-{event_id}", "amount_fen": 100},
    }


async def scalar(runtime: Runtime, sql: str) -> Any:
    async with runtime.engine.connect() as conn:
        return await conn.scalar(text(sql))


async def column(runtime: Runtime, sql: str) -> list[Any]:
    async with runtime.engine.connect() as conn:
        return list(await conn.scalars(text(sql)))


def failing_inbound(
    monkeypatch: pytest.MonkeyPatch, broken: set[str] | None = None
) -> Counter[int]:
    """Make applying the events fail (those of `broken` only, when given); counts tries."""
    tries: Counter[int] = Counter()
    apply = processing.apply_inbound

    async def apply_or_fail(session: AsyncSession, row: StoredEvent) -> str:
        if broken is None or row.dedupe_key in broken:
            tries[row.id] += 1
            raise RuntimeError(f"cannot apply {row.dedupe_key}")
        return await apply(session, row)

    monkeypatch.setattr(processing, "apply_inbound", apply_or_fail)
    return tries


def without_backoff(runtime: Runtime) -> Runtime:
    """Retries due at once: concurrent workers keep meeting on the same failing rows."""
    settings = runtime.settings.model_copy(update={"event_retry_base_seconds": 0.0})
    return dataclasses.replace(runtime, settings=settings)


async def test_concurrent_workers_count_each_failed_attempt_once(
    committed: Runtime,
    committed_client: httpx.AsyncClient,
    corp: WeComTenant,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tries = failing_inbound(monkeypatch)
    events = [order(f"f{i:02d}") for i in range(40)]
    assert (await post(committed_client, corp.signed({"events": events}))).status_code == 202
    runtime = without_backoff(committed)
    consumers = [InboundConsumer(runtime, batch_size=5) for _ in range(4)]
    for _ in range(100):
        await asyncio.gather(*(c.drain() for c in consumers))
        # Two more rounds once every row looks dead: late failures would count then.
        if await scalar(committed, "SELECT count(*) FROM dead_letters") == len(events):
            await asyncio.gather(*(c.drain() for c in consumers))
            break
    limit = committed.settings.event_max_attempts
    assert await column(committed, "SELECT attempts FROM inbound_events") == [limit] * len(events)
    assert await column(committed, "SELECT attempts FROM dead_letters") == [limit] * len(events)
    assert all(tries[i] >= limit for i in tries) and len(tries) == len(events)


async def test_an_inbound_dead_letter_names_its_event_and_keeps_the_limit_on_replay(
    committed: Runtime,
    committed_client: httpx.AsyncClient,
    corp: WeComTenant,
    monkeypatch: pytest.MonkeyPatch,
    scrm_env: dict[str, str],
) -> None:
    failing_inbound(monkeypatch, broken={"ord-dead"})
    batch = {"events": [order("ord-ok"), order("ord-dead")]}
    assert (await post(committed_client, corp.signed(batch))).status_code == 202
    runtime = without_backoff(committed)
    consumer = InboundConsumer(runtime, batch_size=10)
    await consumer.drain()
    limit = committed.settings.event_max_attempts
    listed = (await committed_client.get("/v1/admin/dlq", headers=bearer(corp.admin))).json()
    [letter] = listed["items"]
    inbound_id = await scalar(
        committed, "SELECT id FROM inbound_events WHERE dedupe_key = 'ord-dead'"
    )
    assert letter["handler"] == HANDLER and letter["attempts"] == limit
    assert letter["inbound_event_id"] == inbound_id and letter["event_id"] is None
    assert letter["about"] == {
        "kind": "inbound_event",
        "id": inbound_id,
        "source": "event",
        "type": "order.paid",
        "event_id": "ord-dead",
    }
    assert letter["what"] == "inbound event order.paid ord-dead from event"
    one = await committed_client.get(f"/v1/admin/dlq/{letter['id']}", headers=bearer(corp.admin))
    assert one.json()["about"] == letter["about"]

    listed_cli = await run_scrm(scrm_env, "dlq", "list")
    assert listed_cli.returncode == 0, listed_cli.stderr
    [line] = listed_cli.stdout.strip().splitlines()
    shown = json.loads(line)
    assert shown["what"] == "inbound event order.paid ord-dead from event"
    assert shown["attempts"] == limit

    # Replayed while still broken: a fresh round of attempts, counted from zero again.
    replayed = await committed_client.post(
        f"/v1/admin/dlq/{letter['id']}/replay", headers=bearer(corp.admin)
    )
    assert replayed.status_code == 200, replayed.text
    assert replayed.json()["what"] == letter["what"]
    await consumer.drain()
    [again] = (await committed_client.get("/v1/admin/dlq", headers=bearer(corp.admin))).json()[
        "items"
    ]
    assert (again["id"], again["status"], again["attempts"]) == (letter["id"], "dead", limit)


async def test_an_event_delivered_twice_dead_letters_once_within_the_limit(
    committed: Runtime, committed_client: httpx.AsyncClient
) -> None:
    await ensure_test_tables(committed)
    async with unit_of_work(committed.sessionmaker) as session:
        tenant = await make_tenant(session)
        admin = await make_key(session, tenant, "admin")
        await publish(session, "test.fail", {"order": 1}, tenant_id=tenant.id)
    await relay_all(committed)
    [event_id] = await column(committed, "SELECT id FROM outbox_events WHERE type = 'test.fail'")
    # A second delivery of the same event (a relay that published it twice) fails as well.
    await committed.redis.enqueue_job(
        DELIVER_JOB, [event_id], _queue_name=committed.queue_name("points")
    )
    await work_until_idle(committed, "points")
    limit = committed.settings.event_max_attempts
    [letter] = (await committed_client.get("/v1/admin/dlq", headers=bearer(admin))).json()["items"]
    assert letter["attempts"] == limit
    outbox_uuid = await scalar(
        committed, f"SELECT event_id::text FROM outbox_events WHERE id = {event_id}"
    )
    assert letter["about"] == {
        "kind": "event",
        "id": event_id,
        "source": None,
        "type": "test.fail",
        "event_id": outbox_uuid,
    }
    assert letter["what"] == f"event test.fail {outbox_uuid}"

    replayed = await committed_client.post(
        f"/v1/admin/dlq/{letter['id']}/replay", headers=bearer(admin)
    )
    assert replayed.status_code == 200
    await work_until_idle(committed, "points")
    [again] = (await committed_client.get("/v1/admin/dlq", headers=bearer(admin))).json()["items"]
    assert (again["id"], again["attempts"]) == (letter["id"], limit)
