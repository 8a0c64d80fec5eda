"""The outbox relay: moves committed events from Postgres to the services' arq queues.

It claims unpublished rows with `FOR UPDATE SKIP LOCKED` (so several relays may
run side by side), enqueues one `deliver_events` job per subscribed service and
batch, then marks the rows published, all in one transaction. A relay killed
after enqueueing but before its commit leaves the rows unpublished: they are
enqueued again later and the consumers' `processed_events` record turns the
second delivery into a no-op. It wakes on `NOTIFY scrm_outbox` (sent at commit
by `publish`) and polls once a second in case a notification was missed. After a
pass that published events it pauses (SCRM_RELAY_PAUSE_SECONDS, 0.1 s), so a
steady stream of commits goes out in a few larger jobs rather than a job per commit.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncSession

from shared.config import plain_postgres_url
from shared.db import unit_of_work
from shared.events import NOTIFY_CHANNEL, SubscriptionRegistry
from shared.observability import EVENTS_PUBLISHED
from shared.runtime import Runtime

log = logging.getLogger("scrm.relay")

DELIVER_JOB = "deliver_events"

_CLAIM = text(
    "SELECT id, type FROM outbox_events WHERE published_at IS NULL "
    "ORDER BY id LIMIT :limit FOR UPDATE SKIP LOCKED"
)
_MARK = text("UPDATE outbox_events SET published_at = now() WHERE id = ANY(:ids)")


def _undelivered(interest: str | None) -> TextClause:
    """Events a handler has neither processed nor dead-lettered, published long ago, and
    (for a handler with an `interest`) that it has something to do with: the events it
    had none in when they were published were never its to do, and are not now."""
    interested = f"\n       AND ({interest})" if interest else ""
    return text(
        f"""
    SELECT o.id FROM outbox_events o
     WHERE (o.type = ANY(:types) OR o.type LIKE ANY(:families))
       AND o.published_at >= now() - interval '7 days'
       AND o.published_at < now() - make_interval(secs => :after)
       AND NOT EXISTS (SELECT 1 FROM processed_events p
                        WHERE p.event_id = o.id AND p.handler = :handler)
       AND NOT EXISTS (SELECT 1 FROM dead_letters d
                        WHERE d.event_id = o.id AND d.handler = :handler){interested}
     ORDER BY o.id LIMIT :limit
    """
    )


_SWEEP_LOCK = 0x5C12_0002


class OutboxRelay:
    def __init__(
        self,
        runtime: Runtime,
        registry: SubscriptionRegistry,
        *,
        batch_size: int = 1000,
        job_size: int = 200,
        idle_poll_seconds: float = 1.0,
        sweep_seconds: float = 60.0,
        pause_seconds: float | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.runtime = runtime
        self.registry = registry
        self.batch_size = batch_size
        self.job_size = job_size
        self.idle_poll_seconds = idle_poll_seconds
        self.sweep_seconds = sweep_seconds
        self.pause_seconds = (
            runtime.settings.relay_pause_seconds if pause_seconds is None else pause_seconds
        )
        self._sleep = sleep  # the pause's; tests pass one that records it
        self._wake = asyncio.Event()

    async def publish_pending(self) -> int:
        """Publish one batch of committed events; returns how many rows it handled."""
        async with unit_of_work(self.runtime.sessionmaker) as session:
            rows = (await session.execute(_CLAIM, {"limit": self.batch_size})).all()
            if not rows:
                return 0
            by_service: dict[str, list[int]] = defaultdict(list)
            for event_id, event_type in rows:
                for service in self.registry.services_for(event_type):
                    by_service[service].append(event_id)
            for service in sorted(by_service):
                by_service[service] = await self._interesting(
                    session, service, by_service[service], dict(rows)
                )
            for service, ids in by_service.items():
                queue = self.runtime.queue_name(service)
                for start in range(0, len(ids), self.job_size):
                    await self.runtime.redis.enqueue_job(
                        DELIVER_JOB, ids[start : start + self.job_size], _queue_name=queue
                    )
            await session.execute(_MARK, {"ids": [row[0] for row in rows]})
        EVENTS_PUBLISHED.inc(len(rows))
        return len(rows)

    async def _interesting(
        self, session: AsyncSession, service: str, ids: list[int], types: dict[int, str]
    ) -> list[int]:
        """The events some handler of the service has something to do with. Where every
        handler of an event's type has an `interest` (shared.events.subscribe_many) and
        none holds, the event is not enqueued for the service: a job, a claim and a
        transaction less for the many events nobody listens for, and no row written
        (the redelivery sweep asks the same interests, so it does not send them later).
        An interest is therefore written so that it cannot turn true for an event
        after the fact: a journey launched later is not interested in older events."""
        handlers = {t: self.registry.handlers(service, t) for t in {types[i] for i in ids}}
        asked = sorted(
            {s.name: s for subs in handlers.values() for s in subs if s.interest}.values(),
            key=lambda s: s.name,
        )
        if not asked or any(not s.interest for subs in handlers.values() for s in subs):
            return ids
        columns = ", ".join(f"({s.interest})" for s in asked)
        found = await session.execute(
            text(f"SELECT o.id, {columns} FROM outbox_events o WHERE o.id = ANY(:ids)"),
            {"ids": ids},
        )
        keep: list[int] = []
        for event_id, *flags in found:
            interest = dict(zip((s.name for s in asked), flags, strict=True))
            if any(interest[s.name] for s in handlers[types[event_id]]):
                keep.append(event_id)
        return sorted(keep)

    async def redeliver_lost(self) -> int:
        """Re-enqueue events whose delivery job was lost (e.g. Redis restarted empty).

        Only for a service whose queue is empty: then no job for it is queued,
        deferred or running, so an event it has neither processed nor
        dead-lettered after `SCRM_REDELIVER_AFTER_SECONDS` can only have been
        lost. Delivering it again is safe: handlers run once per event.
        """
        after = self.runtime.settings.redeliver_after_seconds
        total = 0
        async with unit_of_work(self.runtime.sessionmaker) as session:
            got_lock = await session.scalar(
                text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": _SWEEP_LOCK}
            )
            if not got_lock:
                return 0  # another relay is sweeping
            for sub in self.registry.all():
                queue = self.runtime.queue_name(sub.service)
                if await self.runtime.redis.zcard(queue):
                    continue
                ids = list(
                    await session.scalars(
                        _undelivered(sub.interest),
                        {
                            "types": sorted(sub.event_types),
                            # custom.* -> custom.% (the names of a family are [a-z0-9_.])
                            "families": sorted(
                                t[:-1] + "%" for t in sub.event_types if t.endswith(".*")
                            ),
                            "after": after,
                            "handler": sub.name,
                            "limit": self.batch_size,
                        },
                    )
                )
                for start in range(0, len(ids), self.job_size):
                    await self.runtime.redis.enqueue_job(
                        DELIVER_JOB,
                        ids[start : start + self.job_size],
                        handler=sub.name,
                        _queue_name=queue,
                    )
                if ids:
                    log.warning(
                        "relay: %d event(s) for %s were never delivered; enqueued again",
                        len(ids),
                        sub.name,
                    )
                total += len(ids)
        return total

    async def run(self, stop: asyncio.Event) -> None:
        """Publish until `stop` is set; survives database and Redis outages."""
        listener = await self._listen()
        next_sweep = asyncio.get_running_loop().time() + self.sweep_seconds
        try:
            while not stop.is_set():
                if asyncio.get_running_loop().time() >= next_sweep:
                    next_sweep += self.sweep_seconds
                    try:
                        await self.redeliver_lost()
                    except Exception:
                        log.exception("relay: redelivery sweep failed")
                # Clear before publishing: a NOTIFY that arrives while we publish
                # must wake the next round, not be forgotten.
                self._wake.clear()
                try:
                    handled = await self.publish_pending()
                except Exception:
                    log.exception("relay: publishing failed; retrying in 1 s")
                    handled = 0
                    await wait_any(stop, None, 1.0)
                    if listener is None or listener.is_closed():
                        listener = await self._listen()
                    continue
                if handled >= self.batch_size:
                    continue
                if handled and self.pause_seconds:
                    # A stream of commits: let the next ones gather (SCRM_RELAY_PAUSE_SECONDS).
                    # After a quiet spell the first event goes out at once.
                    await self._sleep(self.pause_seconds)
                await wait_any(stop, self._wake, self.idle_poll_seconds)
        finally:
            if listener is not None and not listener.is_closed():
                await listener.close()

    async def _listen(self) -> asyncpg.Connection | None:
        try:
            conn = await asyncpg.connect(plain_postgres_url(self.runtime.database_url), timeout=5)
            await conn.add_listener(NOTIFY_CHANNEL, lambda *_: self._wake.set())
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            log.warning("relay: LISTEN unavailable (%s); polling only", exc)
            return None
        return conn


async def wait_any(stop: asyncio.Event, wake: asyncio.Event | None, seconds: float) -> None:
    """Wait until `stop` or `wake` is set, or `seconds` have passed."""
    waiters = [asyncio.ensure_future(stop.wait())]
    if wake is not None:
        waiters.append(asyncio.ensure_future(wake.wait()))
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
