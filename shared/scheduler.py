"""Delayed jobs: kept in Postgres until shortly before they are due.

    await schedule(session, service="campaigns", job="run_step", args={...},
                   due_at=now + timedelta(days=3), tenant_id=t, dedupe_key="step:42")

A row is written in the caller's transaction (so it exists only if the change
commits). The scheduler moves rows due within `SCRM_SCHEDULER_HORIZON_SECONDS`
to their service's arq queue (deferred to `due_at`); Redis never holds work
days away. Each run happens under a row lock and marks the row done in the same
transaction as the job's own writes, so a job that is delivered twice runs once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db import unit_of_work
from shared.events import SERVICES
from shared.models import ScheduledJob
from shared.retention import BATCH, purge_expired
from shared.runtime import Runtime

log = logging.getLogger("scrm.scheduler")

RUN_SCHEDULED_JOB = "run_scheduled_job"


def backoff_seconds(base: float, attempt: int, cap: float = 3600.0) -> float:
    """Delay before retry number `attempt` (1-based): base, 4x base, 16x base, ... capped."""
    return float(min(cap, base * (4 ** (attempt - 1))))


@dataclass(frozen=True)
class ScheduledWork:
    id: int
    tenant_id: uuid.UUID | None
    job: str
    args: Mapping[str, Any]
    due_at: datetime
    attempts: int
    created_at: datetime


class RetryLater(Exception):
    """Raised by a job whose outside dependency is unavailable: run again in `seconds`.

    Unlike a failure it does not count towards dead-lettering; the job decides
    how long it is worth waiting (see `deferral_seconds`).
    """

    def __init__(self, seconds: float, reason: str) -> None:
        super().__init__(reason)
        self.seconds = seconds
        self.reason = reason


def deferral_seconds(work: ScheduledWork, base: float, cap: float = 1800.0) -> float:
    """Roughly doubling delays (the job's age, at least `base`, at most `cap`)."""
    age = (datetime.now(work.created_at.tzinfo) - work.created_at).total_seconds()
    return float(min(cap, max(base, age)))


JobFunction = Callable[[AsyncSession, ScheduledWork], Awaitable[None]]


@dataclass
class JobRegistry:
    _jobs: dict[tuple[str, str], JobFunction] = field(default_factory=dict)

    def register(
        self, service: str, name: str | None = None
    ) -> Callable[[JobFunction], JobFunction]:
        if service not in SERVICES:
            raise ValueError(f"unknown service {service!r}")

        def add(fn: JobFunction) -> JobFunction:
            self._jobs[(service, name or fn.__name__)] = fn
            return fn

        return add

    def get(self, service: str, name: str) -> JobFunction | None:
        return self._jobs.get((service, name))

    def remove(self, service: str, name: str) -> None:
        self._jobs.pop((service, name), None)


jobs = JobRegistry()
scheduled_job = jobs.register


@dataclass(frozen=True)
class Recurrence:
    service: str
    name: str
    every_seconds: int


RECURRING: list[Recurrence] = []


def recurring_job(
    service: str, name: str, *, every_seconds: int
) -> Callable[[JobFunction], JobFunction]:
    """A job that runs every `every_seconds` (at multiples of it since the epoch, UTC).

    The scheduler keeps the next run scheduled; its dedupe key makes each run
    exist once however many schedulers are running.
    """

    def add(fn: JobFunction) -> JobFunction:
        jobs.register(service, name)(fn)
        RECURRING.append(Recurrence(service, name, every_seconds))
        return fn

    return add


async def ensure_recurring(session: AsyncSession, now: datetime | None = None) -> int:
    """Schedule the next run of every recurring job that has none yet; how many were new."""
    moment = (now or datetime.now(UTC)).timestamp()
    added = 0
    for rec in RECURRING:
        due = (int(moment) // rec.every_seconds + 1) * rec.every_seconds
        created = await schedule(
            session,
            service=rec.service,
            job=rec.name,
            due_at=datetime.fromtimestamp(due, UTC),
            dedupe_key=f"recurring:{rec.service}:{rec.name}:{due}",
        )
        added += created is not None
    return added


async def schedule(
    session: AsyncSession,
    *,
    service: str,
    job: str,
    due_at: datetime,
    args: Mapping[str, Any] | None = None,
    tenant_id: uuid.UUID | None = None,
    dedupe_key: str | None = None,
) -> int | None:
    """Schedule `job` of `service` at `due_at`; None if `dedupe_key` was already used."""
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}")
    if due_at.tzinfo is None:
        raise ValueError("due_at must be timezone-aware")
    statement = (
        insert(ScheduledJob)
        .values(
            tenant_id=tenant_id,
            service=service,
            job=job,
            args=dict(args or {}),
            due_at=due_at,
            dedupe_key=dedupe_key,
        )
        .on_conflict_do_nothing(constraint="uq_scheduled_jobs_dedupe_key")
        .returning(ScheduledJob.id)
    )
    return await session.scalar(statement)


async def cancel_scheduled(session: AsyncSession, job_id: int, tenant_id: uuid.UUID | None) -> bool:
    result = await session.execute(
        text(
            "UPDATE scheduled_jobs SET status = 'cancelled', finished_at = now() "
            "WHERE id = :id AND tenant_id IS NOT DISTINCT FROM :tenant "
            "AND status IN ('pending','enqueued')"
        ),
        {"id": job_id, "tenant": tenant_id},
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


_CLAIM_DUE = text(
    """
    SELECT id, service, due_at, attempts FROM scheduled_jobs
     WHERE (status = 'pending' AND due_at <= now() + make_interval(secs => :horizon))
        -- enqueued long ago and still not run: its Redis job was lost; enqueue again
        OR (status = 'enqueued' AND due_at < now() - interval '5 minutes'
            AND enqueued_at < now() - interval '5 minutes')
     ORDER BY due_at LIMIT :limit
       FOR UPDATE SKIP LOCKED
    """
)


class Scheduler:
    def __init__(
        self,
        runtime: Runtime,
        *,
        batch_size: int = 500,
        poll_seconds: float = 1.0,
        purge_every_seconds: float = 3600.0,
    ):
        self.runtime = runtime
        self.batch_size = batch_size
        self.poll_seconds = poll_seconds
        self.purge_every_seconds = purge_every_seconds

    async def purge(self) -> dict[str, int]:
        """Delete expired bus rows, batch after batch, until none are left."""
        total = {"events": 0, "scheduled_jobs": 0, "idempotency_keys": 0}
        while True:
            async with unit_of_work(self.runtime.sessionmaker) as session:
                counts = await purge_expired(session, self.runtime.settings)
            for kind, n in counts.items():
                total[kind] += n
            if max(counts.values()) < BATCH:
                return total

    async def enqueue_due(self) -> int:
        horizon = self.runtime.settings.scheduler_horizon_seconds
        async with unit_of_work(self.runtime.sessionmaker) as session:
            rows = (
                await session.execute(_CLAIM_DUE, {"horizon": horizon, "limit": self.batch_size})
            ).all()
            for job_id, service, due_at, attempts in rows:
                await self.runtime.redis.enqueue_job(
                    RUN_SCHEDULED_JOB,
                    job_id,
                    _queue_name=self.runtime.queue_name(service),
                    _defer_until=due_at,
                    # arq ignores a second enqueue of a job id still queued. Its job keys
                    # are not per queue: the id names the installation's queue too, or
                    # another database's job sharing this Redis would block this one.
                    _job_id=f"{self.runtime.queue_name(service)}:scheduled:{job_id}:{attempts}",
                )
            if rows:
                await session.execute(
                    text(
                        "UPDATE scheduled_jobs SET status = 'enqueued', enqueued_at = now() "
                        "WHERE id = ANY(:ids)"
                    ),
                    {"ids": [row[0] for row in rows]},
                )
        return len(rows)

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        next_purge = loop.time() + 60  # not in the middle of start-up
        next_recurring = loop.time()
        while not stop.is_set():
            if loop.time() >= next_recurring:
                next_recurring += 60
                try:
                    async with unit_of_work(self.runtime.sessionmaker) as session:
                        await ensure_recurring(session)
                except Exception:
                    log.exception("scheduler: scheduling recurring jobs failed")
            if loop.time() >= next_purge:
                next_purge += self.purge_every_seconds
                try:
                    await self.purge()
                except Exception:
                    log.exception("scheduler: purging expired rows failed")
            try:
                handled = await self.enqueue_due()
            except Exception:
                log.exception("scheduler: enqueueing due jobs failed; retrying")
                handled = 0
            if handled >= self.batch_size:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.poll_seconds)


_LOCK_JOB = text(
    "SELECT id, tenant_id, service, job, args, due_at, status, attempts, created_at, "
    "due_at > now() AS early FROM scheduled_jobs WHERE id = :id FOR UPDATE"
)


async def run_scheduled_job(ctx: dict[str, Any], scheduled_id: int) -> None:
    """arq job: run one scheduled job exactly once (row lock + status in one transaction)."""
    runtime: Runtime = ctx["runtime"]
    registry: JobRegistry = ctx["jobs"]
    attempts = 0
    try:
        async with unit_of_work(runtime.sessionmaker) as session:
            row = (await session.execute(_LOCK_JOB, {"id": scheduled_id})).first()
            if row is None or row.status not in ("enqueued", "pending"):
                return
            if row.early:
                # A stray copy (a re-enqueue, or one left from before a reschedule):
                # the copy deferred to due_at runs it.
                return
            attempts = row.attempts + 1
            fn = registry.get(row.service, row.job)
            if fn is None:
                raise LookupError(f"no scheduled job {row.job!r} in service {row.service}")
            work = ScheduledWork(
                id=row.id,
                tenant_id=row.tenant_id,
                job=row.job,
                args=row.args,
                due_at=row.due_at,
                attempts=row.attempts,
                created_at=row.created_at,
            )
            await fn(session, work)
            await session.execute(
                text(
                    "UPDATE scheduled_jobs SET status = 'done', finished_at = now(), "
                    "attempts = attempts + 1 WHERE id = :id"
                ),
                {"id": scheduled_id},
            )
    except RetryLater as later:
        async with unit_of_work(runtime.sessionmaker) as session:
            await session.execute(
                text(
                    "UPDATE scheduled_jobs SET status = 'pending', last_error = :reason, "
                    "due_at = now() + make_interval(secs => :delay) WHERE id = :id"
                ),
                {"id": scheduled_id, "reason": later.reason[:4000], "delay": later.seconds},
            )
        log.info("scheduled job %s deferred %.1f s: %s", scheduled_id, later.seconds, later.reason)
    except Exception as exc:
        await _scheduled_job_failed(runtime, scheduled_id, attempts, exc)


async def _scheduled_job_failed(
    runtime: Runtime, scheduled_id: int, attempts: int, exc: Exception
) -> None:
    settings = runtime.settings
    error = f"{type(exc).__name__}: {exc}"[:4000]
    log.warning("scheduled job %s failed (attempt %d): %s", scheduled_id, attempts, error)
    async with unit_of_work(runtime.sessionmaker) as session:
        if attempts < settings.event_max_attempts:
            delay = backoff_seconds(settings.event_retry_base_seconds, attempts)
            await session.execute(
                text(
                    "UPDATE scheduled_jobs SET status = 'pending', attempts = :attempts, "
                    "last_error = :error, due_at = now() + make_interval(secs => :delay) "
                    "WHERE id = :id"
                ),
                {"id": scheduled_id, "attempts": attempts, "error": error, "delay": delay},
            )
            return
        await session.execute(
            text(
                "UPDATE scheduled_jobs SET status = 'dead', attempts = :attempts, "
                "last_error = :error, finished_at = now() WHERE id = :id"
            ),
            {"id": scheduled_id, "attempts": attempts, "error": error},
        )
        await session.execute(
            text(
                """
                INSERT INTO dead_letters
                       (tenant_id, service, handler, scheduled_job_id, attempts, last_error)
                SELECT tenant_id, service, job, id, :attempts, :error
                  FROM scheduled_jobs WHERE id = :id
                ON CONFLICT ON CONSTRAINT uq_dead_letters_scheduled_job DO UPDATE
                   SET attempts = EXCLUDED.attempts,
                       last_error = EXCLUDED.last_error, status = 'dead', updated_at = now()
                """
            ),
            {"id": scheduled_id, "attempts": attempts, "error": error},
        )
