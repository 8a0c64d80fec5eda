"""Handlers the bus tests subscribe with; also loaded by worker subprocesses through
SCRM_EXTRA_TASK_MODULES. Their effects go to `test_effects`, which has no unique
key on purpose: a handler run twice leaves two rows."""

from __future__ import annotations

import asyncio

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from shared.events import Event, subscribe, subscribe_many
from shared.scheduler import ScheduledWork, scheduled_job

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS test_effects (
           id bigserial PRIMARY KEY, event_id bigint, handler text,
           at timestamptz DEFAULT now())""",
    "CREATE TABLE IF NOT EXISTS test_switches (name text PRIMARY KEY)",
]


async def record(session: AsyncSession, event_id: int, handler: str) -> None:
    await session.execute(
        text("INSERT INTO test_effects (event_id, handler) VALUES (:e, :h)"),
        {"e": event_id, "h": handler},
    )


async def switched_on(session: AsyncSession, name: str) -> bool:
    found = await session.scalar(text("SELECT 1 FROM test_switches WHERE name = :n"), {"n": name})
    return found is not None


@subscribe("points", "test.ping", name="test.record")
async def record_ping(session: AsyncSession, event: Event) -> None:
    await record(session, event.id, "test.record")


@subscribe("tagging", "test.ping", name="test.record_in_tagging")
async def record_ping_in_tagging(session: AsyncSession, event: Event) -> None:
    await record(session, event.id, "test.record_in_tagging")


@subscribe_many("points", "test.many", "test.many_fail", name="test.many")
async def record_many(session: AsyncSession, events: list[Event]) -> None:
    """One statement for the whole batch; fails on a `test.many_fail` until healed."""
    if any(e.type == "test.many_fail" for e in events) and not await switched_on(session, "healed"):
        raise RuntimeError("set-based handler broken")
    await session.execute(
        text(
            "INSERT INTO test_effects (event_id, handler) "
            "SELECT unnest(CAST(:ids AS bigint[])), 'test.many:' || :n"
        ),
        {"ids": [e.id for e in events], "n": str(len(events))},
    )


@subscribe_many(
    "points",
    "test.gather",
    "test.gather_fail",
    "test.gather_family.*",
    name="test.gather",
    gather=True,
)
async def record_gathered(session: AsyncSession, events: list[Event]) -> None:
    """Records each batch as `test.gather:<tenant>:<size>`; fails on a
    `test.gather_fail` until healed."""
    if any(e.type == "test.gather_fail" for e in events) and not await switched_on(
        session, "healed"
    ):
        raise RuntimeError("gathering handler broken")
    tenants = sorted({str(e.tenant_id) for e in events})
    await session.execute(
        text(
            "INSERT INTO test_effects (event_id, handler) "
            "SELECT unnest(CAST(:ids AS bigint[])), 'test.gather:' || :t || ':' || :n"
        ),
        {"ids": [e.id for e in events], "t": ",".join(tenants), "n": str(len(events))},
    )


@subscribe_many(
    "points", "test.maybe", name="test.interested", interest="o.payload->>'want' = 'yes'"
)
async def record_interesting(session: AsyncSession, events: list[Event]) -> None:
    """Records the events it is handed; only those with `want: yes` should be."""
    for event in events:
        await record(session, event.id, "test.interested")


@subscribe("points", "test.family.*", name="test.family")
async def record_family(session: AsyncSession, event: Event) -> None:
    await record(session, event.id, "test.family")


@subscribe("points", "test.fail", name="test.fails_until_healed")
async def fail_until_healed(session: AsyncSession, event: Event) -> None:
    await record(session, event.id, "test.fails_until_healed")  # rolled back on failure
    if not await switched_on(session, "healed"):
        raise RuntimeError(f"handler broken for event {event.id}")


@subscribe("points", "test.slow", name="test.slow")
async def slow(session: AsyncSession, event: Event) -> None:
    await record(session, event.id, "test.slow")
    await asyncio.sleep(float(event.payload.get("sleep", 0.05)))


@subscribe("points", "test.slow_alone", name="test.slow_alone", batch=False)
async def slow_alone(session: AsyncSession, event: Event) -> None:
    await record(session, event.id, "test.slow_alone")
    await asyncio.sleep(float(event.payload.get("sleep", 0.05)))


@scheduled_job("campaigns", "test_step")
async def test_step(session: AsyncSession, work: ScheduledWork) -> None:
    await record(session, work.id, "test_step")
    if work.args.get("fail") and not await switched_on(session, "healed"):
        raise RuntimeError("step broken")
