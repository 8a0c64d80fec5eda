"""Workers give way to the API during a flood of inbound events (real Redis)."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid

import pytest

from shared.pressure import FloodGauge, FloodValve, OutOfTime, flag_key
from shared.runtime import Runtime


def flood_runtime(runtime: Runtime, **settings: object) -> Runtime:
    """The test runtime with its own flag key and the given flood settings."""
    changed = runtime.settings.model_copy(
        update={"queue_prefix": f"flood-{uuid.uuid4().hex[:8]}", **settings}
    )
    return dataclasses.replace(runtime, settings=changed)


async def test_the_flag_rises_once_the_rate_passes_the_threshold(runtime: Runtime) -> None:
    rt = flood_runtime(runtime, flood_events_per_second=100)
    gauge = FloodGauge(rt)
    gauge.note(60)
    await asyncio.sleep(0.05)
    assert not await rt.redis.exists(flag_key(rt))
    gauge.note(60)
    assert gauge._raising is not None
    await gauge._raising
    assert await rt.redis.exists(flag_key(rt))
    assert 0 < await rt.redis.ttl(flag_key(rt)) <= 2


async def test_a_zero_threshold_never_raises_the_flag(runtime: Runtime) -> None:
    rt = flood_runtime(runtime, flood_events_per_second=0)
    gauge = FloodGauge(rt)
    gauge.note(1_000_000)
    await asyncio.sleep(0.05)
    assert not await rt.redis.exists(flag_key(rt))


class Jobs:
    """Units of work through a valve, recording how many ran at once."""

    def __init__(self, valve: FloodValve) -> None:
        self.valve = valve
        self.running = 0
        self.most = 0

    async def work(self, seconds: float, deadline: float = 1e12) -> None:
        async with self.valve.paced(deadline):
            self.running += 1
            self.most = max(self.most, self.running)
            await asyncio.sleep(seconds)
            self.running -= 1


async def test_while_flagged_a_worker_works_one_job_at_a_time_for_its_share(
    runtime: Runtime,
) -> None:
    rt = flood_runtime(runtime, flood_worker_share=0.2)
    valve = FloodValve(rt)
    calm = Jobs(valve)
    await asyncio.gather(*(calm.work(0.05) for _ in range(4)))
    assert calm.most == 4  # no flag: all at once

    await rt.redis.set(flag_key(rt), b"1", ex=2)
    valve._checked = 0.0  # the valve re-reads the flag every half second
    assert await valve.flooded()
    flooded = Jobs(valve)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.gather(*(flooded.work(0.05) for _ in range(4)))
    assert flooded.most == 1
    # Each 0.05 s of work is followed by 0.2 s of rest: processing gets 20%.
    assert loop.time() - started >= 4 * 0.25 - 0.01


async def test_a_job_that_cannot_get_its_turn_before_its_deadline_stops(
    runtime: Runtime,
) -> None:
    rt = flood_runtime(runtime, flood_worker_share=0.2)
    await rt.redis.set(flag_key(rt), b"1", ex=2)
    jobs = Jobs(FloodValve(rt))
    loop = asyncio.get_running_loop()
    busy = asyncio.create_task(jobs.work(0.3))
    await asyncio.sleep(0.01)
    with pytest.raises(OutOfTime):
        await jobs.work(0.01, deadline=loop.time() + 0.1)
    await busy


async def test_a_share_of_one_never_paces(runtime: Runtime) -> None:
    rt = flood_runtime(runtime, flood_worker_share=1.0)
    await rt.redis.set(flag_key(rt), b"1", ex=2)
    jobs = Jobs(FloodValve(rt))
    await asyncio.gather(*(jobs.work(0.05) for _ in range(4)))
    assert jobs.most == 4
