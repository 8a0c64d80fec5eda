"""Jobs of the tagging service's segments part: full builds (scheduled when a segment
is saved or a rebuild is asked for, retried with backoff) and the sweep of timed
conditions (every minute)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from services.tagging import clock
from services.tagging.segments import service, sweep
from shared.scheduler import ScheduledWork, recurring_job, scheduled_job


@scheduled_job("tagging", service.BUILD_JOB)
async def build_segment(session: AsyncSession, work: ScheduledWork) -> None:
    """Build one segment's membership (a failure marks it failed and is retried)."""
    await service.run_build(session, int(work.args["segment_id"]), clock.now())


@recurring_job("tagging", "segments.sweep", every_seconds=60)
async def sweep_timed_segments(session: AsyncSession, work: ScheduledWork) -> None:
    """Members whose event windows, created_at windows or tag weights moved on with time."""
    await sweep.sweep(session, clock.now())
