"""Per-service arq workers: event delivery with idempotency, retries and dead letters.

A delivery job carries outbox row ids only; the worker loads the events and,
for each handler of its service subscribed to an event's type, runs the handler
in its own transaction together with the `processed_events` insert that makes
a second delivery a no-op. A failing handler is retried alone, with
exponential backoff; after `SCRM_EVENT_MAX_ATTEMPTS` it becomes a dead letter
that ops can list and replay.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any, Protocol

from arq import Retry
from arq.worker import Worker, func
from sqlalchemy import TextClause, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db import unit_of_work
from shared.events import Event, Subscription, SubscriptionRegistry
from shared.models import OutboxEvent, ProcessedEvent
from shared.observability import EVENTS_HANDLED
from shared.relay import DELIVER_JOB
from shared.runtime import Runtime, redis_settings
from shared.scheduler import RUN_SCHEDULED_JOB, JobRegistry, backoff_seconds, run_scheduled_job

log = logging.getLogger("scrm.worker")

# Batchable deliveries per transaction.
BATCH_SIZE = 25
# Events per call of a set-based handler (`subscribe_many`), in one transaction.
MANY_BATCH_SIZE = 1500

_CLAIM_MANY = text(
    """
    INSERT INTO processed_events (event_id, handler)
    SELECT * FROM unnest(CAST(:ids AS bigint[]), CAST(:handlers AS text[]))
    ON CONFLICT DO NOTHING
    RETURNING event_id, handler
    """
)


@functools.cache
def _to_do(interests: tuple[str, ...]) -> TextClause:
    """A job's events, the handlers that have processed each (no payloads), and for
    each handler with an `interest`, whether it has anything to do with the event."""
    asked = "".join(
        f",\n           ({condition}) AS interest_{n}" for n, condition in enumerate(interests)
    )
    return text(
        f"""
    SELECT o.id, o.type,
           ARRAY(SELECT p.handler FROM processed_events p WHERE p.event_id = o.id) AS done{asked}
      FROM outbox_events o
     WHERE o.id = ANY(CAST(:ids AS bigint[]))
    """
    )


# Turns per (handler, tenant) for gathering handlers, taken in one order (no deadlock).
_TAKE_TURNS = text(
    """
    SELECT pg_advisory_xact_lock(hashtextextended(k, 0))
      FROM unnest(CAST(:keys AS text[])) AS k ORDER BY k
    """
)

# The tenants' events waiting for a gathering handler, claimed for this batch: from the
# batch's first event on (older ones are in batches of their own), at most GATHER_SPAN
# ids ahead (the scan stays short whatever the backlog), never a dead letter.
_GATHER = text(
    """
    WITH wanted AS (
        SELECT o.id FROM outbox_events o
         WHERE o.id >= :from_id AND o.id < :from_id + :span
           AND o.tenant_id = ANY(CAST(:tenants AS uuid[]))
           AND (o.type = ANY(CAST(:types AS text[])) OR o.type LIKE ANY(CAST(:families AS text[])))
           AND NOT EXISTS (SELECT 1 FROM processed_events p
                            WHERE p.event_id = o.id AND p.handler = :handler)
           AND NOT EXISTS (SELECT 1 FROM dead_letters d
                            WHERE d.event_id = o.id AND d.handler = :handler)
         ORDER BY o.id
         LIMIT :room
    ), claimed AS (
        INSERT INTO processed_events (event_id, handler)
        SELECT id, :handler FROM wanted
        ON CONFLICT DO NOTHING
        RETURNING event_id
    )
    SELECT o.id, o.event_id, o.type, o.tenant_id, o.payload, o.created_at
      FROM outbox_events o JOIN claimed c ON c.event_id = o.id
     ORDER BY o.id
    """
)
GATHER_SPAN = 20_000

# A dead letter counts the attempts of the round that ended in it: a replay starts a
# new round, and a second delivery of the same event (the relay published it twice)
# runs a round of its own; neither adds up beyond SCRM_EVENT_MAX_ATTEMPTS.
_RECORD_DEAD = text(
    """
    INSERT INTO dead_letters (tenant_id, service, handler, event_id, attempts, last_error)
    VALUES (:tenant_id, :service, :handler, :event_id, :attempts, :error)
    ON CONFLICT ON CONSTRAINT uq_dead_letters_event_handler DO UPDATE
       SET attempts = EXCLUDED.attempts,
           last_error = EXCLUDED.last_error, status = 'dead', updated_at = now()
    """
)


class WorkerLoop(Protocol):
    """Work a service's worker process does besides its queue's jobs."""

    async def run(self, stop: asyncio.Event) -> None:
        """Work until `stop` is set."""

    async def drain(self) -> int:
        """Do everything due now, then return how many items it handled."""


LoopFactory = Callable[[Runtime], WorkerLoop]
# service -> loop name -> (factory, priority)
_LOOPS: dict[str, dict[str, tuple[LoopFactory, bool]]] = {}


def worker_loop(service: str, *, priority: bool = False) -> Callable[[LoopFactory], LoopFactory]:
    """Register a loop that every worker process of `service` runs beside its jobs.

    A `priority` loop is work that must not wait behind a backlog (a welcome message's
    20 s): `scrm up` runs a service's priority loops in a process of their own, at
    normal scheduling priority rather than SCRM_WORKER_NICE; `scrm worker` runs them
    with the rest unless told otherwise."""

    def register(factory: LoopFactory) -> LoopFactory:
        name = f"{factory.__module__}.{factory.__qualname__}"
        _LOOPS.setdefault(service, {})[name] = (factory, priority)
        return factory

    return register


def worker_loops(
    runtime: Runtime, service: str, *, priority: bool | None = None
) -> list[WorkerLoop]:
    """The service's loops: all of them, or only the priority ones (True) or the others."""
    return [
        factory(runtime)
        for factory, urgent in _LOOPS.get(service, {}).values()
        if priority is None or urgent == priority
    ]


def has_priority_loops(service: str) -> bool:
    return any(urgent for _, urgent in _LOOPS.get(service, {}).values())


class EventDelivery:
    """What a service's worker knows to deliver events to its handlers."""

    def __init__(self, runtime: Runtime, service: str, registry: SubscriptionRegistry) -> None:
        self.runtime = runtime
        self.service = service
        self.registry = registry

    async def deliver(self, event_ids: list[int], handler: str | None, attempt: int) -> None:
        pairs = await self._work_for(event_ids, handler)
        batchable = [(e, s) for e, s in pairs if s.batch]
        alone = [(e, s) for e, s in pairs if not s.batch]
        # A job must end well within arq's timeout (which would drop it, half
        # done): past its time budget, the rest goes on in a new job.
        loop = asyncio.get_running_loop()
        budget = self.runtime.settings.job_timeout_seconds / 2
        deadline = loop.time() + budget
        remaining: list[tuple[Event, Subscription]] = []
        if attempt == 1:
            # Batchable deliveries go in transactions of BATCH_SIZE (a set-based
            # handler's, MANY_BATCH_SIZE): few commits, and a failed or slow batch
            # throws away little work before its events go alone.
            chunks: list[list[tuple[Event, Subscription]]] = []
            single = [pair for pair in batchable if pair[1].many is None]
            chunks += [single[i : i + BATCH_SIZE] for i in range(0, len(single), BATCH_SIZE)]
            for name in sorted({s.name for _, s in batchable if s.many is not None}):
                own = [pair for pair in batchable if pair[1].name == name]
                step = MANY_BATCH_SIZE
                chunks += [own[i : i + step] for i in range(0, len(own), step)]
            for chunk in chunks:
                left = deadline - loop.time()
                if len(chunk) == 1 or left <= 0:
                    remaining += chunk
                    continue
                try:
                    # Half of what is left: deliveries one by one always get their turn.
                    async with asyncio.timeout(left / 2):
                        await self._deliver_batch(chunk)
                except TimeoutError:
                    # Too slow, not failing (a busy worker): one by one would be slower
                    # still, so the batch continues in a new job, in halves.
                    await self._split(chunk, handler)
                except Exception as exc:
                    if chunk[0][1].gather and await self._without_gathering(chunk, exc):
                        continue
                    # A handler failed (or the batch was too slow): it rolled back as
                    # a whole; each of its events goes alone, so only a failing one
                    # is retried.
                    log.info("batch of %d deliveries failed (%r); one by one", len(chunk), exc)
                    remaining += chunk
        else:
            remaining += batchable
        remaining += alone
        delivered_alone = 0
        while remaining:
            # At least one delivery per job, so a slow one still makes progress.
            if loop.time() > deadline and delivered_alone:
                rest = sorted({event.id for event, _ in remaining})
                await self.runtime.redis.enqueue_job(
                    DELIVER_JOB,
                    rest,
                    handler=handler,
                    attempt=attempt,
                    _queue_name=self.runtime.queue_name(self.service),
                )
                log.info("delivery time budget used; %d event(s) continue in a new job", len(rest))
                return
            event, sub = remaining.pop(0)
            await self._deliver_one(event, sub, attempt)
            delivered_alone += 1

    async def _without_gathering(
        self, chunk: list[tuple[Event, Subscription]], exc: Exception
    ) -> bool:
        """A gathering batch failed: perhaps on an event it gathered (one being retried
        by its own job). The job's own events alone, still as one batch."""
        log.info("gathering batch of %d failed (%r); its own events alone", len(chunk), exc)
        try:
            await self._deliver_batch(chunk, gather=False)
        except Exception as again:
            log.info("batch of %d deliveries failed again (%r)", len(chunk), again)
            return False
        return True

    async def _split(self, chunk: list[tuple[Event, Subscription]], handler: str | None) -> None:
        ids = sorted({event.id for event, _ in chunk})
        half = max(1, len(ids) // 2)
        for start in range(0, len(ids), half):
            await self.runtime.redis.enqueue_job(
                DELIVER_JOB,
                ids[start : start + half],
                handler=handler,
                attempt=1,
                _queue_name=self.runtime.queue_name(self.service),
            )
        log.info("batch of %d deliveries too slow; continues in new jobs of %d", len(chunk), half)

    async def _work_for(
        self, event_ids: list[int], handler: str | None
    ) -> list[tuple[Event, Subscription]]:
        outbox = OutboxEvent.__table__
        async with unit_of_work(self.runtime.sessionmaker) as session:
            # First what is still to do (without payloads): a job whose events another
            # batch gathered and applied meanwhile loads nothing more, and waits for no
            # turn.
            # A handler's `interest` is asked in the same statement: the events it has
            # nothing to do with are never loaded nor handed to it (nor recorded: the
            # redelivery sweep asks the same interest).
            interested = self._interested()
            wanted: dict[int, list[Subscription]] = {}
            for event_id, event_type, done, *flags in await session.execute(
                _to_do(tuple(sub.interest or "" for sub in interested)),
                {"ids": sorted(set(event_ids))},
            ):
                interest = {
                    sub.name: bool(flag) for sub, flag in zip(interested, flags, strict=True)
                }
                todo = []
                for sub in self._subscriptions(event_id, event_type, handler):
                    if sub.name in done:
                        continue
                    if not interest.get(sub.name, True):
                        continue
                    todo.append(sub)
                if todo:
                    wanted[event_id] = todo
            if not wanted:
                return []
            rows = (
                await session.execute(
                    select(*(outbox.c[name] for name in _EVENT_COLUMNS))
                    .where(outbox.c.id.in_(sorted(wanted)))
                    .order_by(outbox.c.id)
                )
            ).all()
        pairs: list[tuple[Event, Subscription]] = []
        for row in rows:
            event = _event_of(row)
            pairs.extend((event, sub) for sub in wanted[row.id])
        # One order everywhere, so concurrent batches lock processed_events rows
        # in the same order and cannot deadlock.
        pairs.sort(key=lambda pair: (pair[0].id, pair[1].name))
        return pairs

    def _interested(self) -> list[Subscription]:
        """This service's handlers with an `interest`, in name order."""
        return sorted(
            (s for s in self.registry.all() if s.service == self.service and s.interest),
            key=lambda s: s.name,
        )

    def _subscriptions(
        self, event_id: int, event_type: str, handler: str | None
    ) -> list[Subscription]:
        if handler is None:
            return list(self.registry.handlers(self.service, event_type))
        sub = self.registry.get(handler)
        if sub is None or sub.service != self.service:
            log.error("no handler %r in service %s; event %s", handler, self.service, event_id)
            return []
        return [sub]

    async def _deliver_batch(
        self, pairs: list[tuple[Event, Subscription]], *, gather: bool = True
    ) -> None:
        gathered = 0
        async with unit_of_work(self.runtime.sessionmaker) as session:
            # A gathering handler's chunk is its own (deliver() groups by handler).
            gathering = pairs[0][1] if pairs[0][1].gather else None
            if gathering is not None:
                # The turn comes before any claim: a batch waiting for it holds none of
                # the events the batch whose turn it is may gather.
                await _take_turns(session, gathering, [event for event, _ in pairs])
            claimed = await session.execute(
                _CLAIM_MANY,
                {"ids": [e.id for e, _ in pairs], "handlers": [s.name for _, s in pairs]},
            )
            fresh = {(event_id, name) for event_id, name in claimed}
            by_many: dict[str, list[Event]] = {}
            for event, sub in pairs:
                if (event.id, sub.name) not in fresh:
                    continue
                if sub.many is not None:
                    by_many.setdefault(sub.name, []).append(event)
                else:
                    await sub.handler(session, event)
            for name, events in sorted(by_many.items()):
                many = self.registry.get(name)
                assert many is not None and many.many is not None
                if many.gather and gather and events:
                    more = await _gather(session, many, events)
                    gathered = len(more)
                    events = sorted([*events, *more], key=lambda event: event.id)
                await many.many(session, events)
        EVENTS_HANDLED.labels(self.service, "ok").inc(len(fresh) + gathered)
        if len(pairs) > len(fresh):
            EVENTS_HANDLED.labels(self.service, "duplicate").inc(len(pairs) - len(fresh))

    async def _deliver_one(self, event: Event, sub: Subscription, attempt: int) -> None:
        try:
            async with unit_of_work(self.runtime.sessionmaker) as session:
                if sub.gather:
                    await _take_turns(session, sub, [event])
                first = await session.scalar(
                    insert(ProcessedEvent)
                    .values(event_id=event.id, handler=sub.name)
                    .on_conflict_do_nothing()
                    .returning(ProcessedEvent.event_id)
                )
                if first is None:
                    EVENTS_HANDLED.labels(self.service, "duplicate").inc()
                    return
                await sub.handler(session, event)
        except Exception as exc:
            await self._failed(event, sub, attempt, exc)
            return
        EVENTS_HANDLED.labels(self.service, "ok").inc()

    async def _failed(self, event: Event, sub: Subscription, attempt: int, exc: Exception) -> None:
        settings = self.runtime.settings
        log.warning(
            "handler %s failed on event %s (%s) attempt %d/%d: %r",
            sub.name,
            event.id,
            event.type,
            attempt,
            settings.event_max_attempts,
            exc,
            exc_info=exc,
        )
        if attempt < settings.event_max_attempts:
            delay = backoff_seconds(settings.event_retry_base_seconds, attempt)
            await self.runtime.redis.enqueue_job(
                DELIVER_JOB,
                [event.id],
                handler=sub.name,
                attempt=attempt + 1,
                _queue_name=self.runtime.queue_name(self.service),
                _defer_by=delay,
            )
            EVENTS_HANDLED.labels(self.service, "failed").inc()
            return
        async with unit_of_work(self.runtime.sessionmaker) as session:
            await session.execute(
                _RECORD_DEAD,
                {
                    "tenant_id": event.tenant_id,
                    "service": self.service,
                    "handler": sub.name,
                    "event_id": event.id,
                    "attempts": min(attempt, settings.event_max_attempts),
                    # Stored in a text column, which refuses NUL characters.
                    "error": f"{type(exc).__name__}: {exc}".replace("\x00", "\\x00")[:4000],
                },
            )
        EVENTS_HANDLED.labels(self.service, "dead").inc()
        log.error("event %s is a dead letter for handler %s", event.id, sub.name)


async def _take_turns(session: AsyncSession, sub: Subscription, events: list[Event]) -> None:
    """Wait for (and hold to commit) the handler's turn for these events' tenants."""
    tenants = sorted({str(event.tenant_id) for event in events if event.tenant_id is not None})
    if tenants:
        await session.execute(_TAKE_TURNS, {"keys": [f"{sub.name}:{t}" for t in tenants]})


async def _gather(session: AsyncSession, sub: Subscription, events: list[Event]) -> list[Event]:
    """Claim the tenants' other events waiting for `sub` (their turn is held), to be
    applied with `events`; their own jobs later find them done."""
    room = MANY_BATCH_SIZE - len(events)
    tenants = sorted({str(event.tenant_id) for event in events if event.tenant_id is not None})
    if room <= 0 or not tenants:
        return []
    rows = await session.execute(
        _GATHER,
        {
            "from_id": min(event.id for event in events),
            "span": GATHER_SPAN,
            "tenants": tenants,
            "types": sorted(t for t in sub.event_types if not t.endswith(".*")),
            # custom.* -> custom.% (the names of a family are [a-z0-9_.])
            "families": sorted(t[:-1] + "%" for t in sub.event_types if t.endswith(".*")),
            "handler": sub.name,
            "room": room,
        },
    )
    return [_event_of(row) for row in rows]


_EVENT_COLUMNS = ("id", "event_id", "type", "tenant_id", "payload", "created_at")


def _event_of(row: Any) -> Event:
    """An outbox row (its _EVENT_COLUMNS) as a consumer sees it."""
    return Event(
        id=row.id,
        event_id=row.event_id,
        type=row.type,
        tenant_id=row.tenant_id,
        payload=row.payload,
        created_at=row.created_at,
    )


async def deliver_events(
    ctx: dict[str, Any], event_ids: list[int], handler: str | None = None, attempt: int = 1
) -> None:
    """arq job: deliver outbox events to this service's handlers."""
    delivery: EventDelivery = ctx["delivery"]
    try:
        await delivery.deliver(event_ids, handler, attempt)
    except Exception as exc:
        # Infrastructure trouble (database down...): the whole job comes back later;
        # handlers already done are skipped then thanks to processed_events.
        job_try = int(ctx.get("job_try", 1))
        log.exception("delivery job failed (try %d); retrying", job_try)
        raise Retry(defer=min(60.0, 2.0 * job_try)) from exc


def build_worker(
    runtime: Runtime,
    service: str,
    registry: SubscriptionRegistry,
    jobs: JobRegistry,
    *,
    burst: bool = False,
) -> Worker:
    """An arq worker for one service's queue (create it inside the running loop)."""
    settings = runtime.settings
    return Worker(
        functions=[
            func(deliver_events, name=DELIVER_JOB, max_tries=50),
            func(run_scheduled_job, name=RUN_SCHEDULED_JOB, max_tries=50),
        ],
        queue_name=runtime.queue_name(service),
        redis_settings=redis_settings(runtime.redis_url),
        handle_signals=False,
        burst=burst,
        max_jobs=settings.worker_max_jobs,
        poll_delay=settings.worker_poll_seconds,
        keep_result=0,
        # A worker killed mid-job leaves the job queued; arq runs it again once
        # this timeout (+10 s) has passed.
        job_timeout=settings.job_timeout_seconds,
        ctx={
            "delivery": EventDelivery(runtime, service, registry),
            "jobs": jobs,
            "runtime": runtime,
            "service": service,
        },
    )
