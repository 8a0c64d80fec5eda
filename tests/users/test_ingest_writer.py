"""The group-commit writer under concurrent, overlapping batches."""

from __future__ import annotations

import asyncio
import random

from sqlalchemy import text

from services.users.ingest import Inbound, InboundWriter
from shared.db import unit_of_work
from shared.events import INBOUND_CHANNEL
from shared.runtime import Runtime
from tests.helpers import make_tenant


async def test_overlapping_concurrent_batches_store_each_key_once(committed: Runtime) -> None:
    async with unit_of_work(committed.sessionmaker) as session:
        tenant = (await make_tenant(session)).id
    async with committed.engine.connect() as conn:
        outbox_before = await conn.scalar(text("SELECT count(*) FROM outbox_events"))
    writer = InboundWriter(committed, batch_size=250, writers=4)
    keys = [f"k{i:03d}" for i in range(1000)]

    def items(order: list[str]) -> list[Inbound]:
        return [Inbound(tenant, "event", k, "checkin", {"event_id": k}) for k in order]

    # Many requests at once, each with every key in its own order: the
    # concurrent transactions contend for the same keys in every order.
    orders = [random.Random(seed).sample(keys, len(keys)) for seed in range(8)]
    try:
        results = await asyncio.gather(*(writer.store(items(order)) for order in orders))
    finally:
        await writer.close()
    new = {k: 0 for k in keys}
    for order, flags in zip(orders, results, strict=True):
        for key, flag in zip(order, flags, strict=True):
            new[key] += flag
    assert set(new.values()) == {1}, "each key is new exactly once"
    async with committed.engine.connect() as conn:
        stored = await conn.scalar(
            text("SELECT count(*) FROM inbound_events WHERE tenant_id = :t"), {"t": tenant}
        )
        pending = await conn.scalar(
            text(
                "SELECT count(*) FROM inbound_events WHERE tenant_id = :t AND processed_at IS NULL"
            ),
            {"t": tenant},
        )
        outbox = await conn.scalar(text("SELECT count(*) FROM outbox_events"))
    assert stored == pending == len(keys)
    assert outbox == outbox_before, "stored events wake the users worker without an outbox row"


async def test_a_lone_event_is_written_without_waiting_for_company(committed: Runtime) -> None:
    async with unit_of_work(committed.sessionmaker) as session:
        tenant = (await make_tenant(session)).id
    writer = InboundWriter(committed, batch_size=500, writers=2)
    try:
        first = await writer.store([Inbound(tenant, "event", "solo", "checkin", {})])
        again = await writer.store([Inbound(tenant, "event", "solo", "checkin", {})])
    finally:
        await writer.close()
    assert (first, again) == ([True], [False])


async def test_a_batch_with_new_events_wakes_the_users_workers_once(committed: Runtime) -> None:
    """The stored batch notifies the users workers' channel; a batch of repeats does not."""
    async with unit_of_work(committed.sessionmaker) as session:
        tenant = (await make_tenant(session)).id
    heard: asyncio.Queue[str] = asyncio.Queue()
    async with committed.engine.connect() as conn:
        listener = (await conn.get_raw_connection()).driver_connection
        assert listener is not None

        def hear(*args: object) -> None:
            heard.put_nowait(str(args[1]))

        await listener.add_listener(INBOUND_CHANNEL, hear)
        writer = InboundWriter(committed, batch_size=500, writers=1)
        try:
            items = [Inbound(tenant, "event", f"w{i}", "checkin", {}) for i in range(3)]
            assert await writer.store(items) == [True] * 3
            await asyncio.wait_for(heard.get(), timeout=5)
            await asyncio.sleep(0.3)
            assert heard.empty(), "one notification per batch"
            assert await writer.store(items) == [False] * 3
            await asyncio.sleep(0.5)
            assert heard.empty(), "nothing new, nobody woken"
        finally:
            await writer.close()
            await listener.remove_listener(INBOUND_CHANNEL, hear)


async def test_a_flood_wakes_the_workers_at_a_bounded_rate_and_after_its_last_batch(
    committed: Runtime,
) -> None:
    """Notifying commits queue behind each other: a flood notifies at most once per
    wake interval, and what it stored last is still announced (a trailing wake-up)."""
    async with unit_of_work(committed.sessionmaker) as session:
        tenant = (await make_tenant(session)).id
    heard: list[float] = []
    loop = asyncio.get_running_loop()
    async with committed.engine.connect() as conn:
        listener = (await conn.get_raw_connection()).driver_connection
        assert listener is not None

        def hear(*_: object) -> None:
            heard.append(loop.time())

        await listener.add_listener(INBOUND_CHANNEL, hear)
        writer = InboundWriter(committed, batch_size=5, writers=2, wake_interval=0.2)
        try:
            started = loop.time()
            for burst in range(20):
                items = [Inbound(tenant, "event", f"f{burst}-{i}", "checkin", {}) for i in range(3)]
                assert await writer.store(items) == [True] * 3
                await asyncio.sleep(0.02)
            last_stored = loop.time()
            await asyncio.sleep(0.6)
        finally:
            await writer.close()
            await listener.remove_listener(INBOUND_CHANNEL, hear)
    assert heard, "the workers were woken"
    assert heard[0] - started < 0.15, "the first batch after a quiet spell wakes them at once"
    # 20 batches over about 0.5 s: a handful of wake-ups, not one each.
    assert len(heard) <= (last_stored - started) / 0.2 + 2
    assert heard[-1] >= last_stored - 0.05, "the last batches were announced too"
