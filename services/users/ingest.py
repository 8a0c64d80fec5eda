"""The write path of everything integrations send: store raw, dedupe, hand to workers.

Requests wait only for their event to be durable: an `InboundWriter` gathers
the events of concurrent requests and writes them with one statement (the raw
rows with their dedupe keys, and a NOTIFY that wakes the users worker), then
answers each request. A flood of callbacks therefore costs one statement per
up to a hundred events, and a retried or replayed delivery is recognised by
its dedupe key and not stored again. All processing happens later, in the
users worker, which claims the stored rows itself (consumer.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from services.users.flood import FloodMeter
from shared.crypto import FieldCipher
from shared.events import INBOUND_CHANNEL
from shared.runtime import Runtime

log = logging.getLogger("scrm.users.ingest")

_STORE = """
    WITH incoming AS (
        SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bytea[])
               AS t(tenant_id, source, dedupe_key, type, payload)
    ), stored AS (
        -- In key order, so that concurrent batches lock the same keys in the same order.
        INSERT INTO inbound_events (tenant_id, source, dedupe_key, type, payload_enc)
        SELECT tenant_id, source, dedupe_key, type, payload FROM incoming
         ORDER BY tenant_id, source, dedupe_key
        ON CONFLICT ON CONSTRAINT uq_inbound_events_dedupe DO NOTHING
        RETURNING tenant_id, source, dedupe_key
    )
"""
_STORE_QUIETLY = _STORE + "SELECT tenant_id, source, dedupe_key FROM stored"
# The users workers' wake-up, once (an uncorrelated subquery), only if something is new.
_STORE_AND_WAKE = (
    _STORE + "SELECT tenant_id, source, dedupe_key, (SELECT pg_notify($6, '')) FROM stored"
)
_WAKE = "SELECT pg_notify($1, '')"

# At most one wake-up per this many seconds. A transaction that notifies holds a
# lock that every other notifying commit waits for, its WAL flush included: one
# per batch would make a flood's batches commit one at a time. Workers that are
# busy need no wake-up anyway (they go on while there is more), and a batch
# written without one is announced by the next, or by a trailing wake-up.
WAKE_INTERVAL = 0.05


def payload_context(tenant_id: uuid.UUID) -> bytes:
    """AAD of a stored raw event: it decrypts only as this tenant's inbound payload."""
    return b"inbound:" + tenant_id.bytes


def read_payload(cipher: FieldCipher, tenant_id: uuid.UUID, token: bytes) -> dict[str, Any]:
    value = json.loads(cipher.decrypt(token, context=payload_context(tenant_id)))
    assert isinstance(value, dict)
    return value


@dataclass(frozen=True)
class Inbound:
    tenant_id: uuid.UUID
    source: str
    dedupe_key: str
    type: str
    payload: dict[str, Any]


@dataclass
class _Pending:
    items: list[Inbound]
    done: asyncio.Future[list[bool]]


# A batch that lost a deadlock or a serialization race is written again.
_RETRYABLE = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)
_ATTEMPTS = 3


class InboundWriter:
    """Group commit for inbound events (one per process, shared by all requests).

    Requests queue their items; a dispatcher hands everything queued to one of
    `writers` concurrent transactions. While every writer is busy, arrivals
    accumulate into the next batch, so batches grow with the load and no
    request waits for a timer: at low load an event is written alone, at once.
    `wait_ms` optionally lingers for more before writing.
    """

    def __init__(
        self,
        runtime: Runtime,
        *,
        batch_size: int = 500,
        wait_ms: float = 0.0,
        writers: int = 4,
        wake_interval: float = WAKE_INTERVAL,
        flood_events_per_second: int = 0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.runtime = runtime
        self.flood = FloodMeter(runtime, flood_events_per_second, clock=clock)
        # What the wake-up interval is measured on, and waited out with.
        self._clock = clock
        self._sleep = sleep
        self.batch_size = batch_size
        self.wait = wait_ms / 1000
        self.wake_interval = wake_interval
        # When the last write meant to wake the workers began, and the last that did
        # (one that stored nothing new sends nothing).
        self._woke_at = self._announced_at = float("-inf")
        self._trailing: asyncio.Task[None] | None = None
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._slots = asyncio.Semaphore(writers)
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flushes: set[asyncio.Task[None]] = set()

    async def store(self, items: list[Inbound]) -> list[bool]:
        """Store `items` durably; for each, True if new, False if seen before."""
        if not items:
            return []
        # The writer's loop, not asyncio.get_running_loop() each time: that one asks
        # the kernel for the process id on every call.
        loop = self._loop
        if loop is None or self._task is None or self._task.done():
            loop = self._loop = asyncio.get_running_loop()
            self._task = loop.create_task(self._run(), name="inbound-writer")
        pending = _Pending(items, loop.create_future())
        self._queue.put_nowait(pending)
        return await pending.done

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            # While all writers are busy, more requests join this batch.
            await self._slots.acquire()
            size = len(batch[0].items)
            deadline = loop.time() + self.wait
            while size < self.batch_size:
                if not self._queue.empty():
                    nxt = self._queue.get_nowait()
                elif self.wait and (remaining := deadline - loop.time()) > 0:
                    try:
                        nxt = await asyncio.wait_for(self._queue.get(), remaining)
                    except TimeoutError:
                        break
                else:
                    break
                batch.append(nxt)
                size += len(nxt.items)
            flush = asyncio.create_task(self._flush(batch), name="inbound-flush")
            self._flushes.add(flush)
            flush.add_done_callback(self._flushes.discard)

    async def _flush(self, batch: list[_Pending]) -> None:
        try:
            items = [item for p in batch for item in p.items]
            try:
                results = await self._write(items)
            except Exception as exc:
                log.exception("storing %d inbound events failed", len(items))
                for pending in batch:
                    if not pending.done.done():
                        pending.done.set_exception(exc)
                return
            offset = 0
            for pending in batch:
                n = len(pending.items)
                if not pending.done.done():
                    pending.done.set_result(results[offset : offset + n])
                offset += n
        finally:
            self._slots.release()

    async def _write(self, items: list[Inbound]) -> list[bool]:
        cipher = self.runtime.cipher
        started = self._clock()
        wake = started - self._woke_at >= self.wake_interval
        if wake:
            self._woke_at = started
        args: tuple[Any, ...] = (
            [i.tenant_id for i in items],
            [i.source for i in items],
            [i.dedupe_key for i in items],
            [i.type for i in items],
            cipher.encrypt_many(
                [
                    (json.dumps(i.payload, ensure_ascii=False), payload_context(i.tenant_id))
                    for i in items
                ]
            ),
        )
        if wake:
            args += (INBOUND_CHANNEL,)
        # The pool's connection, driven directly: one statement per batch, which is a
        # transaction of its own (autocommit): one round trip, no BEGIN or COMMIT.
        async with self.runtime.engine.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            assert raw is not None
            for attempt in range(1, _ATTEMPTS + 1):
                try:
                    rows = await raw.fetch(_STORE_AND_WAKE if wake else _STORE_QUIETLY, *args)
                    break
                except _RETRYABLE:
                    if attempt == _ATTEMPTS:
                        raise
        self.flood.stored(len(rows))
        if rows and wake:
            self._announced_at = max(self._announced_at, started)
        elif rows:
            self._wake_later(self._clock())
        stored = {(r[0], r[1], r[2]) for r in rows}
        results = []
        for item in items:
            key = (item.tenant_id, item.source, item.dedupe_key)
            # The first of several identical items in one batch is the new one.
            results.append(key in stored)
            stored.discard(key)
        return results

    def _wake_later(self, stored_at: float) -> None:
        """Make sure the workers hear of what was stored at `stored_at`, soon."""
        if self._trailing is None or self._trailing.done():
            self._trailing = asyncio.get_running_loop().create_task(
                self._trailing_wake(stored_at), name="inbound-wake"
            )

    async def _trailing_wake(self, stored_at: float) -> None:
        await self._sleep(max(0.0, self._woke_at + self.wake_interval - self._clock()))
        if self._announced_at > stored_at:
            return  # a later write woke them, after this one was committed
        self._woke_at = self._announced_at = self._clock()
        try:
            async with self.runtime.engine.connect() as conn:
                raw = (await conn.get_raw_connection()).driver_connection
                assert raw is not None
                await raw.execute(_WAKE, INBOUND_CHANNEL)
        except Exception as exc:  # the workers poll every second anyway
            log.warning("could not wake the users workers: %r", exc)

    async def close(self) -> None:
        self.flood.close()
        for task in (self._task, self._trailing):
            if task is not None:
                task.cancel()
