"""Driving the real relay and real arq workers from tests."""

from __future__ import annotations

import asyncio

from sqlalchemy import text

from shared.events import registry
from shared.relay import OutboxRelay
from shared.runtime import Runtime
from shared.scheduler import Scheduler, jobs
from shared.worker import build_worker, worker_loops
from tests.shared.bus_handlers import SCHEMA


async def ensure_test_tables(runtime: Runtime) -> None:
    async with runtime.engine.begin() as conn:
        for statement in SCHEMA:
            await conn.execute(text(statement))
        await conn.execute(text("TRUNCATE test_effects, test_switches"))


async def relay_all(runtime: Runtime) -> int:
    relay = OutboxRelay(runtime, registry)
    total = 0
    while handled := await relay.publish_pending():
        total += handled
    return total


async def work_until_idle(runtime: Runtime, *services: str) -> None:
    """Run burst workers until every named service's queue is empty (deferred retries
    too), with the service's own loops (the users worker's inbound events) drained first."""
    for service in services:
        for loop in worker_loops(runtime, service):
            await asyncio.wait_for(loop.drain(), timeout=30)
        worker = build_worker(runtime, service, registry, jobs, burst=True)
        try:
            await asyncio.wait_for(worker.main(), timeout=30)
        finally:
            await worker.close()


async def schedule_and_work(runtime: Runtime, service: str, rounds: int = 1) -> None:
    for _ in range(rounds):
        await Scheduler(runtime).enqueue_due()
        await work_until_idle(runtime, service)


async def effects(runtime: Runtime, handler: str | None = None) -> list[int]:
    query = "SELECT event_id FROM test_effects"
    params = {}
    if handler:
        query += " WHERE handler = :h"
        params["h"] = handler
    async with runtime.engine.connect() as conn:
        return [row[0] for row in await conn.execute(text(query + " ORDER BY id"), params)]


async def switch_on(runtime: Runtime, name: str) -> None:
    async with runtime.engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO test_switches VALUES (:n) ON CONFLICT DO NOTHING"), {"n": name}
        )
