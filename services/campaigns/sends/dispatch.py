"""The send dispatcher: every campaigns worker process runs one (`worker_loop`).

It claims `planned` sends that are due with `FOR UPDATE SKIP LOCKED`. A send the
channel completes inside the database (`in_app`: the contact's inbox) is done in
that same transaction, so it happens exactly once. A send to an outside system is
first marked `sending` (attempt counted, a lease of LEASE_SECONDS as its `due_at`)
and committed, then called outside any transaction, and its answer stored. A
worker killed during the call leaves the row `sending`; once the lease has run out
the row is claimed again and its channel decides from what the other side already
has (`reconcile`) whether to call again, so a lost answer never makes a second
message where the provider can tell (a webhook receiver is given the send's key
in `X-Scrm-Delivery` for the same end).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.campaigns import clock
from services.campaigns.sends import channels
from services.campaigns.settings import campaigns_settings
from shared.db import unit_of_work
from shared.loops import ListeningLoop
from shared.runtime import Runtime

log = logging.getLogger("scrm.campaigns.sends")

NOTIFY_CHANNEL = "scrm_campaign_sends"
BATCH = 200
LEASE_SECONDS = 60.0
CONCURRENCY = 20


def backoff(attempt: int) -> float:
    return float(min(3600, 5 * 4 ** (attempt - 1)))


@dataclass
class Send:
    id: int
    tenant_id: Any
    key: str
    channel: str
    status: str
    contact_id: Any
    content: dict[str, Any]
    sender: str | None
    attempts: int
    provider_ref: str | None
    created_at: datetime


_CLAIM = text(
    """
    SELECT id, tenant_id, key, channel, status, contact_id, content, sender, attempts,
           provider_ref, created_at
      FROM campaign_sends
     WHERE status IN ('planned', 'sending') AND due_at <= :now
       AND channel = ANY(CAST(:channels AS text[]))
     ORDER BY due_at, id
     LIMIT :limit
       FOR UPDATE SKIP LOCKED
    """
)

_CLAIM_KEYS = text(
    """
    SELECT id, tenant_id, key, channel, status, contact_id, content, sender, attempts,
           provider_ref, created_at
      FROM campaign_sends
     WHERE tenant_id = :tenant AND key = ANY(CAST(:keys AS text[])) AND status = 'planned'
       FOR UPDATE SKIP LOCKED
    """
)

_MARK_SENDING = text(
    """
    UPDATE campaign_sends SET status = 'sending', attempts = attempts + 1,
           due_at = :lease, updated_at = :now
     WHERE id = ANY(CAST(:ids AS bigint[]))
    """
)

_DONE = text(
    """
    UPDATE campaign_sends
       SET status = CAST(:status AS varchar), reason = :reason, error = :error,
           provider_ref = :ref,
           sent_at = CASE WHEN CAST(:status AS varchar) IN ('sent', 'delivered')
                          THEN CAST(:now AS timestamptz) ELSE sent_at END,
           delivered_at = CASE WHEN CAST(:status AS varchar) = 'delivered'
                               THEN CAST(:now AS timestamptz) ELSE delivered_at END,
           due_at = :due, updated_at = :now
     WHERE id = :id
    """
)


async def notify(session: AsyncSession) -> None:
    await session.execute(text(f"NOTIFY {NOTIFY_CHANNEL}"))


class SendDispatcher(ListeningLoop):
    channel = NOTIFY_CHANNEL

    def __init__(self, runtime: Runtime, *, idle_poll_seconds: float = 1.0) -> None:
        super().__init__(runtime, idle_poll_seconds=idle_poll_seconds)
        self._slots = asyncio.Semaphore(CONCURRENCY)

    async def step(self) -> int:
        return await self._send(
            _CLAIM, {"now": clock.now(), "limit": BATCH, "channels": list(channels.READY)}
        )

    async def send_now(self, tenant_id: Any, keys: list[str]) -> int:
        """Send these planned sends of a tenant at once (the welcome lane's), unless a
        dispatcher has them already."""
        return await self._send(_CLAIM_KEYS, {"tenant": tenant_id, "keys": keys})

    async def _send(self, claim: Any, params: dict[str, Any]) -> int:
        now = clock.now()
        async with unit_of_work(self.runtime.sessionmaker) as session:
            rows = (await session.execute(claim, params)).all()
            sends = [Send(**row._mapping) for row in rows]
            inside = [s for s in sends if s.channel in channels.IN_DATABASE]
            for send in inside:
                await channels.deliver_inside(session, send, now)
            outside = [s for s in sends if s.channel not in channels.IN_DATABASE]
            settings = campaigns_settings()
            for short, ids in (
                (True, [s.id for s in outside if s.channel == "wecom_welcome"]),
                (False, [s.id for s in outside if s.channel != "wecom_welcome"]),
            ):
                if ids:
                    lease = settings.welcome_lease_seconds if short else LEASE_SECONDS
                    await session.execute(
                        _MARK_SENDING,
                        {"ids": ids, "lease": now + timedelta(seconds=lease), "now": now},
                    )
        if outside:
            await asyncio.gather(*(self._call(s) for s in outside))
        return len(sends)

    async def _call(self, send: Send) -> None:
        async with self._slots:
            try:
                result = await channels.call(self.runtime, send)
            except Exception as exc:
                result = channels.Result("retry", error=f"{type(exc).__name__}: {exc}")
        now = clock.now()
        attempts = send.attempts + 1
        status, due, reason = result.status, now, result.reason
        if status == "retry":
            if attempts >= campaigns_settings().max_send_attempts:
                status, reason = "failed", reason or "provider_error"
            else:
                # Still `sending`: the next attempt first asks the provider what it has.
                status, due = "sending", now + timedelta(seconds=backoff(attempts))
        async with unit_of_work(self.runtime.sessionmaker) as session:
            await session.execute(
                _DONE,
                {
                    "id": send.id,
                    "status": status,
                    "reason": reason,
                    "error": result.error,
                    "ref": result.provider_ref or send.provider_ref,
                    "due": due,
                    "now": now,
                },
            )
