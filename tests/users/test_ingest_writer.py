"""The group-commit writer under concurrent, overlapping batches."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from sqlalchemy import text

from services.users.ingest import Inbound, InboundWriter
from shared.db import unit_of_work
from shared.events import INBOUND_CHANNEL
from shared.runtime import Runtime
from tests.clock import FakeClock, wait_until
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


@asynccontextmanager
async def wake_ups(runtime: Runtime) -> AsyncIterator[Callable[[], Awaitable[int]]]:
    """Listens on the users workers' channel; yields a count of the wake-ups sent so far.

    The count is exact: it sends a marker and waits for it, and PostgreSQL delivers
    notifications in the order their transactions committed.
    """
    heard: list[str] = []
    markers = itertools.count()
    async with runtime.engine.connect() as conn:
        listener = (await conn.get_raw_connection()).driver_connection
        assert listener is not None

        def hear(_conn: object, _pid: int, _channel: str, payload: str) -> None:
            heard.append(payload)

        async def sent_so_far() -> int:
            marker = f"marker-{next(markers)}"
            async with runtime.engine.begin() as other:
                await other.execute(
                    text("SELECT pg_notify(:channel, :marker)"),
                    {"channel": INBOUND_CHANNEL, "marker": marker},
                )
            await wait_until(lambda: marker in heard, "our own notification")
            return heard[: heard.index(marker)].count("")

        await listener.add_listener(INBOUND_CHANNEL, hear)
        try:
            yield sent_so_far
        finally:
            await listener.remove_listener(INBOUND_CHANNEL, hear)


async def test_a_batch_with_new_events_wakes_the_users_workers_once(committed: Runtime) -> None:
    """The stored batch notifies the users workers' channel; a batch of repeats does not."""
    async with unit_of_work(committed.sessionmaker) as session:
        tenant = (await make_tenant(session)).id
    writer = InboundWriter(committed, batch_size=500, writers=1)
    async with wake_ups(committed) as sent_so_far:
        try:
            items = [Inbound(tenant, "event", f"w{i}", "checkin", {}) for i in range(3)]
            assert await writer.store(items) == [True] * 3
            assert await sent_so_far() == 1, "one notification per batch"
            assert await writer.store(items) == [False] * 3
            assert await sent_so_far() == 1, "nothing new, nobody woken"
        finally:
            await writer.close()


async def test_a_flood_wakes_the_workers_at_a_bounded_rate_and_after_its_last_batch(
    committed: Runtime,
) -> None:
    """Notifying commits queue behind each other: a flood notifies at most once per
    wake interval, and what it stored last is still announced (a trailing wake-up)."""
    async with unit_of_work(committed.sessionmaker) as session:
        tenant = (await make_tenant(session)).id
    clock = FakeClock()
    writer = InboundWriter(
        committed, batch_size=5, writers=2, wake_interval=0.2, clock=clock, sleep=clock.sleep
    )
    stored = itertools.count()

    async def burst() -> None:
        n = next(stored)
        items = [Inbound(tenant, "event", f"f{n}-{i}", "checkin", {}) for i in range(3)]
        assert await writer.store(items) == [True] * 3

    async with wake_ups(committed) as sent_so_far:
        try:
            await burst()
            assert await sent_so_far() == 1, "the first batch after a quiet spell wakes them"
            for _ in range(9):  # a batch every 20 ms, all within the wake interval
                clock.advance(0.02)
                await burst()
            assert await sent_so_far() == 1, "a handful of wake-ups, not one per batch"
            await clock.until_sleeping()  # the trailing wake-up waits for the interval's end
            clock.advance(0.05)

            async def announced() -> bool:
                return await sent_so_far() == 2

            await wait_until(announced, "the last batches announced by a trailing wake-up")
            clock.advance(0.25)
            await burst()
            assert await sent_so_far() == 3, "a batch after a whole interval wakes them at once"
        finally:
            await writer.close()
