"""The write path of everything integrations send: store raw, dedupe, hand to workers.

Requests wait only for their event to be durable: an `InboundWriter` gathers
the events of concurrent requests for a couple of milliseconds and writes them
in one transaction (one INSERT of the raw rows with their dedupe keys, one of
the outbox rows that wake the users worker), then answers each request. A
flood of callbacks therefore costs a few statements per hundreds of events,
and a retried or replayed delivery is recognised by its dedupe key and not
stored again. All processing happens later, in the users worker.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text

from shared.crypto import FieldCipher
from shared.db import unit_of_work
from shared.events import NOTIFY_CHANNEL
from shared.runtime import Runtime

log = logging.getLogger("scrm.users.ingest")

INBOUND_RECEIVED = "users.inbound_received"

_STORE = text(
    """
    WITH incoming AS (
        SELECT * FROM unnest(CAST(:tenants AS uuid[]), CAST(:sources AS text[]),
                             CAST(:keys AS text[]), CAST(:types AS text[]),
                             CAST(:payloads AS bytea[]))
               AS t(tenant_id, source, dedupe_key, type, payload)
    ), stored AS (
        INSERT INTO inbound_events (tenant_id, source, dedupe_key, type, payload_enc)
        SELECT tenant_id, source, dedupe_key, type, payload FROM incoming
        ON CONFLICT ON CONSTRAINT uq_inbound_events_dedupe DO NOTHING
        RETURNING id, tenant_id, source, dedupe_key
    ), published AS (
        INSERT INTO outbox_events (event_id, tenant_id, type, payload)
        SELECT gen_random_uuid(), tenant_id, :event_type, jsonb_build_object('inbound_id', id)
          FROM stored
    )
    SELECT tenant_id, source, dedupe_key FROM stored
    """
)


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
    done: asyncio.Future[list[bool]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class InboundWriter:
    """Group commit for inbound events (one per process, shared by all requests)."""

    def __init__(self, runtime: Runtime, *, batch_size: int = 500, wait_ms: float = 2.0) -> None:
        self.runtime = runtime
        self.batch_size = batch_size
        self.wait = wait_ms / 1000
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def store(self, items: list[Inbound]) -> list[bool]:
        """Store `items` durably; for each, True if new, False if seen before."""
        if not items:
            return []
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="inbound-writer")
        pending = _Pending(items)
        await self._queue.put(pending)
        return await pending.done

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            size = len(batch[0].items)
            deadline = asyncio.get_running_loop().time() + self.wait
            while size < self.batch_size:
                remaining = deadline - asyncio.get_running_loop().time()
                try:
                    nxt = (
                        self._queue.get_nowait()
                        if remaining <= 0
                        else await asyncio.wait_for(self._queue.get(), remaining)
                    )
                except (asyncio.QueueEmpty, TimeoutError):
                    break
                batch.append(nxt)
                size += len(nxt.items)
            try:
                results = await self._write([item for p in batch for item in p.items])
            except Exception as exc:
                log.exception("storing %d inbound events failed", size)
                for pending in batch:
                    if not pending.done.done():
                        pending.done.set_exception(exc)
                continue
            offset = 0
            for pending in batch:
                n = len(pending.items)
                if not pending.done.done():
                    pending.done.set_result(results[offset : offset + n])
                offset += n

    async def _write(self, items: list[Inbound]) -> list[bool]:
        cipher = self.runtime.cipher
        async with unit_of_work(self.runtime.sessionmaker) as session:
            rows = await session.execute(
                _STORE,
                {
                    "tenants": [i.tenant_id for i in items],
                    "sources": [i.source for i in items],
                    "keys": [i.dedupe_key for i in items],
                    "types": [i.type for i in items],
                    "payloads": [
                        cipher.encrypt(
                            json.dumps(i.payload, ensure_ascii=False),
                            context=payload_context(i.tenant_id),
                        )
                        for i in items
                    ],
                    "event_type": INBOUND_RECEIVED,
                },
            )
            stored = {(r.tenant_id, r.source, r.dedupe_key) for r in rows}
            if stored:
                await session.execute(text(f"NOTIFY {NOTIFY_CHANNEL}"))
        results = []
        for item in items:
            key = (item.tenant_id, item.source, item.dedupe_key)
            # The first of several identical items in one batch is the new one.
            results.append(key in stored)
            stored.discard(key)
        return results

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
