"""Delayed jobs: far-future work stays in Postgres, near work runs once, failures dead-letter."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from shared.db import unit_of_work
from shared.dlq import ALL_TENANTS, list_dead_letters, replay_dead_letter
from shared.runtime import Runtime
from shared.scheduler import Scheduler, cancel_scheduled, schedule
from tests.clock import wait_until
from tests.shared.bus_support import effects, ensure_test_tables, schedule_and_work, switch_on


@pytest.fixture(autouse=True)
async def bus_tables(committed: Runtime) -> None:
    await ensure_test_tables(committed)


async def status_of(runtime: Runtime, job_id: int) -> str:
    async with runtime.engine.connect() as conn:
        return str(
            await conn.scalar(
                text("SELECT status FROM scheduled_jobs WHERE id = :i"), {"i": job_id}
            )
        )


async def test_far_future_job_stays_in_postgres(committed: Runtime) -> None:
    async with unit_of_work(committed.sessionmaker) as session:
        job_id = await schedule(
            session,
            service="campaigns",
            job="test_step",
            due_at=datetime.now(UTC) + timedelta(days=3),
        )
    assert job_id is not None
    assert await Scheduler(committed).enqueue_due() == 0
    assert await committed.redis.zcard(committed.queue_name("campaigns")) == 0
    assert await status_of(committed, job_id) == "pending"


async def test_due_job_runs_once_at_its_time(committed: Runtime) -> None:
    due = datetime.now(UTC) + timedelta(seconds=0.5)
    async with unit_of_work(committed.sessionmaker) as session:
        job_id = await schedule(
            session, service="campaigns", job="test_step", due_at=due, dedupe_key="step:1"
        )
        again = await schedule(
            session, service="campaigns", job="test_step", due_at=due, dedupe_key="step:1"
        )
    assert job_id is not None and again is None, "the dedupe key schedules once"
    assert await Scheduler(committed).enqueue_due() == 1
    assert await Scheduler(committed).enqueue_due() == 0, "claimed rows are not enqueued twice"
    # A second copy in Redis (as after a lost acknowledgement) must not run it twice.
    await committed.redis.enqueue_job(
        "run_scheduled_job", job_id, _queue_name=committed.queue_name("campaigns")
    )
    await schedule_and_work(committed, "campaigns")
    async with committed.engine.connect() as conn:
        ran_at = await conn.scalar(
            text("SELECT at FROM test_effects WHERE event_id = :i"), {"i": job_id}
        )
    assert await effects(committed, "test_step") == [job_id]
    assert ran_at >= due - timedelta(milliseconds=50), "not before it is due"
    assert await status_of(committed, job_id) == "done"


async def test_cancelled_job_does_not_run(committed: Runtime) -> None:
    async with unit_of_work(committed.sessionmaker) as session:
        job_id = await schedule(
            session, service="campaigns", job="test_step", due_at=datetime.now(UTC)
        )
        assert job_id is not None
        assert await cancel_scheduled(session, job_id, None)
    await schedule_and_work(committed, "campaigns")
    assert await effects(committed) == []


async def test_failing_job_dead_letters_and_replays(committed: Runtime) -> None:
    async with unit_of_work(committed.sessionmaker) as session:
        job_id = await schedule(
            session,
            service="campaigns",
            job="test_step",
            args={"fail": True},
            due_at=datetime.now(UTC),
        )

    async def dead() -> bool:
        await schedule_and_work(committed, "campaigns")
        return await status_of(committed, job_id) == "dead"

    await wait_until(dead, "the failing job dead-lettered", every=0.1)
    async with unit_of_work(committed.sessionmaker) as session:
        [letter] = await list_dead_letters(session, ALL_TENANTS)
        assert letter.scheduled_job_id == job_id
        assert letter.attempts == committed.settings.event_max_attempts
        await switch_on(committed, "healed")
        await replay_dead_letter(session, committed, ALL_TENANTS, letter.id)
    await schedule_and_work(committed, "campaigns")
    assert await status_of(committed, job_id) == "done"
    assert await effects(committed, "test_step") == [job_id]


async def test_schedule_refuses_naive_times(committed: Runtime) -> None:
    async with unit_of_work(committed.sessionmaker) as session:
        with pytest.raises(ValueError, match="timezone-aware"):
            await schedule(session, service="campaigns", job="x", due_at=datetime.now())
