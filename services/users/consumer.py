"""Applying stored inbound events: every users worker claims them straight from Postgres.

The write path (ingest.py) stores each callback or webhook event with one
statement that also sends `NOTIFY scrm_inbound`. Each users worker process
listens, claims unprocessed rows oldest first with `FOR UPDATE SKIP LOCKED`
(so any number of workers share a flood without meeting), and applies them in
the transaction that marks them processed: an event is applied once, and a
worker killed midway leaves its rows to the others as its transaction rolls
back. No outbox row, relay or queue stands between a stored event and its
worker, and it wakes within a round trip of the commit (and polls once a
second, for retries that fall due and notifications it missed).

Rows go `SCRM_INBOUND_BATCH_SIZE` to a transaction, applied together with a few
statements for the whole batch (processing.apply_batch, inbound_batch.py). A
batch that fails rolls back as a whole and its rows go one by one; a row that fails alone is tried
again after `SCRM_EVENT_RETRY_BASE_SECONDS` (4x longer each time), and after
`SCRM_EVENT_MAX_ATTEMPTS` it becomes a dead letter that `scrm dlq replay`
makes due again. Its failure is counted while it is still locked, so its
attempts never exceed that maximum however many workers meet on it; an event
that can never be applied (invalid, stored by an earlier version that did not
check it at ingest) is a dead letter at its first failure.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.users import processing, repository
from services.users.flood import HOLD_SECONDS, flood_key, flooded
from services.users.settings import users_settings
from shared.config import plain_postgres_url
from shared.db import unit_of_work
from shared.dlq import replays_inbound_events
from shared.errors import InvalidInput
from shared.events import INBOUND_CHANNEL
from shared.observability import EVENTS_HANDLED
from shared.relay import wait_any
from shared.runtime import Runtime
from shared.scheduler import backoff_seconds

log = logging.getLogger("scrm.users.consumer")


@replays_inbound_events
async def replay(session: AsyncSession, inbound_id: int) -> None:
    """A dead inbound event is due again; the users workers hear of it at commit."""
    await repository.requeue_inbound(session, inbound_id)
    await session.execute(text(f"NOTIFY {INBOUND_CHANNEL}"))


# The name inbound events carry in dead letters, logs and metrics.
HANDLER = "users.process_inbound"
# Failures that trying again cannot cure: the event is a dead letter at its first.
_NEVER_APPLICABLE = (processing.UnappliableEvent, InvalidInput)


class InboundConsumer:
    def __init__(
        self,
        runtime: Runtime,
        *,
        batch_size: int | None = None,
        concurrency: int | None = None,
        idle_poll_seconds: float = 1.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        settings = users_settings()
        self.runtime = runtime
        self.batch_size = batch_size or settings.inbound_batch_size
        self.concurrency = concurrency or settings.inbound_concurrency
        self.idle_poll_seconds = idle_poll_seconds
        self._sleep = sleep  # the flood hold's; tests pass one on a clock they move
        self._wake = asyncio.Event()
        self._listener: asyncpg.Connection | None = None
        self._listening = asyncio.Lock()
        self._flood_key = flood_key(runtime)
        self._flooded = False

    async def step(self) -> int:
        """Claim and apply one batch; returns how many rows it handled."""
        claimed: list[int] = []
        try:
            async with unit_of_work(self.runtime.sessionmaker) as session:
                rows = await repository.claim_inbound(session, self.batch_size)
                claimed = [row.id for row in rows]
                if rows:
                    # Together: a few statements for the whole batch (inbound_batch.py).
                    outcomes = await processing.apply_batch(session, rows)
                    await repository.mark_inbound_applied(
                        session, list(zip(rows, outcomes, strict=True))
                    )
        except Exception as exc:
            if not claimed:
                raise  # nothing claimed: the database itself is in trouble
            # One of them failed (or the batch lost a deadlock): all rolled back, and
            # each goes alone, so only a failing row is retried (and counted, once).
            log.info("batch of %d inbound events failed (%r); one by one", len(claimed), exc)
            for inbound_id in claimed:
                await self.apply_one(inbound_id)
            return len(claimed)
        EVENTS_HANDLED.labels("users", "ok").inc(len(claimed))
        return len(claimed)

    async def apply_one(self, inbound_id: int) -> None:
        """Apply one row alone. A failure is counted in the same transaction, while the
        row is still locked: a worker that claims it next sees the count (and the
        retry time), so no two workers ever count one attempt twice."""
        try:
            async with unit_of_work(self.runtime.sessionmaker) as session:
                row = await repository.claim_inbound_row(session, inbound_id)
                if row is None:
                    return  # applied meanwhile, or another worker holds it
                try:
                    async with session.begin_nested():
                        outcome = await processing.apply_inbound(session, row)
                except Exception as exc:
                    counted = await self._count_failure(session, inbound_id, exc)
                else:
                    await repository.mark_inbound_applied(session, [(row, outcome)])
                    counted = None
        except Exception as exc:
            # The transaction itself failed (its commit, the connection): counted apart.
            await self._failed(inbound_id, exc)
            return
        if counted is None:
            EVENTS_HANDLED.labels("users", "ok").inc()
        else:
            self._report_failure(inbound_id, *counted)

    async def _failed(self, inbound_id: int, exc: Exception) -> None:
        """Count a failure on the row in a transaction of its own, if the row is still due
        and no other worker holds it (else that worker's attempt is the one counted)."""
        async with unit_of_work(self.runtime.sessionmaker) as session:
            held = await repository.claim_inbound_row(session, inbound_id) is not None
            counted = await self._count_failure(session, inbound_id, exc) if held else None
        if counted is not None:
            self._report_failure(inbound_id, *counted)
        else:
            log.warning(
                "inbound event %s failed (%r); not counted: applied, counted or held elsewhere",
                inbound_id,
                exc,
                exc_info=exc,
            )

    async def _count_failure(
        self, session: AsyncSession, inbound_id: int, exc: Exception
    ) -> tuple[int, bool, Exception] | None:
        """Count the failure on the row this session holds: retried later, or a dead
        letter at the last attempt (at once for an event that can never be applied)."""
        settings = self.runtime.settings
        # Stored in text columns, which refuse NUL characters.
        error = f"{type(exc).__name__}: {exc}".replace("\x00", "\\x00")[:4000]
        attempts = await repository.inbound_attempts(session, inbound_id)
        if attempts is None:
            return None  # applied meanwhile
        attempt = attempts + 1
        dead = attempt >= settings.event_max_attempts or isinstance(exc, _NEVER_APPLICABLE)
        row = await repository.record_inbound_failure(
            session,
            inbound_id,
            error,
            retry_in=None if dead else backoff_seconds(settings.event_retry_base_seconds, attempt),
        )
        if row is not None and dead:
            await repository.bury_inbound(session, row, HANDLER)
        return attempt, dead, exc

    def _report_failure(self, inbound_id: int, attempt: int, dead: bool, exc: Exception) -> None:
        log.warning(
            "inbound event %s failed, attempt %d/%d: %r",
            inbound_id,
            attempt,
            self.runtime.settings.event_max_attempts,
            exc,
            exc_info=exc,
        )
        if dead:
            EVENTS_HANDLED.labels("users", "dead").inc()
            log.error("inbound event %s is a dead letter", inbound_id)
        else:
            EVENTS_HANDLED.labels("users", "failed").inc()

    async def drain(self) -> int:
        """Apply everything due now (tests, and `scrm worker --burst`-like runs)."""
        total = 0
        while handled := await self.step():
            total += handled
        return total

    async def run(self, stop: asyncio.Event) -> None:
        """Claim and apply until `stop` is set; survives database outages."""
        await self._listen()
        try:
            await asyncio.gather(*(self._loop(stop) for _ in range(self.concurrency)))
        finally:
            if self._listener is not None and not self._listener.is_closed():
                await self._listener.close()

    async def _loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            # Taken before claiming: a NOTIFY that arrives meanwhile wakes the next round.
            wake = self._wake
            try:
                await self._hold_back_while_flooded(stop)
                handled = await self.step()
            except Exception:
                log.exception("inbound: claiming failed; retrying in 1 s")
                await wait_any(stop, None, 1.0)
                await self._listen()
                continue
            if handled < self.batch_size:
                await wait_any(stop, wake, self.idle_poll_seconds)

    async def _hold_back_while_flooded(self, stop: asyncio.Event) -> None:
        """One batch per HOLD_SECONDS while this machine's API absorbs a flood (flood.py)."""
        flooded_now = await flooded(self.runtime, self._flood_key)
        if flooded_now != self._flooded:
            self._flooded = flooded_now
            log.info(
                "inbound: %s",
                f"the API here is absorbing a flood; applying one batch per {HOLD_SECONDS:.0f} s"
                if flooded_now
                else "the flood is over; applying at full speed",
            )
        if flooded_now:
            waiters = [
                asyncio.ensure_future(self._sleep(HOLD_SECONDS)),
                asyncio.ensure_future(stop.wait()),
            ]
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()

    def _notified(self, *_: object) -> None:
        wake, self._wake = self._wake, asyncio.Event()
        wake.set()

    async def _listen(self) -> None:
        async with self._listening:
            if self._listener is not None and not self._listener.is_closed():
                return
            try:
                conn = await asyncpg.connect(
                    plain_postgres_url(self.runtime.database_url), timeout=5
                )
                await conn.add_listener(INBOUND_CHANNEL, self._notified)
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                log.warning("inbound: LISTEN unavailable (%s); polling only", exc)
                return
            self._listener = conn
