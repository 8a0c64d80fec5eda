"""Housekeeping: the bus's own tables do not grow forever.

Published events (and their processed-events records) older than
`SCRM_EVENT_RETENTION_DAYS`, finished scheduled jobs as old, and idempotency
records older than `SCRM_IDEMPOTENCY_RETENTION_HOURS` are deleted in batches.
Events that are still dead letters are kept until replayed or resolved; the
audit log is never purged here.
"""

from __future__ import annotations

import logging

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from shared.config import Settings

log = logging.getLogger("scrm.retention")

_LOCK = 0x5C12_0003
BATCH = 5000

_OLD_EVENTS = text(
    """
    WITH doomed AS (
        SELECT o.id FROM outbox_events o
         WHERE o.published_at < now() - make_interval(days => :days)
           AND NOT EXISTS (SELECT 1 FROM dead_letters d
                            WHERE d.event_id = o.id AND d.status = 'dead')
         ORDER BY o.id LIMIT :batch
    ), gone_processed AS (
        DELETE FROM processed_events p USING doomed WHERE p.event_id = doomed.id
    )
    DELETE FROM outbox_events o USING doomed WHERE o.id = doomed.id RETURNING o.id
    """
)
_OLD_JOBS = text(
    """
    DELETE FROM scheduled_jobs WHERE id IN (
        SELECT id FROM scheduled_jobs
         WHERE status IN ('done', 'cancelled')
           AND finished_at < now() - make_interval(days => :days)
         LIMIT :batch)
    """
)
_OLD_KEYS = text(
    """
    DELETE FROM idempotency_keys WHERE ctid IN (
        SELECT ctid FROM idempotency_keys
         WHERE created_at < now() - make_interval(hours => :hours) LIMIT :batch)
    """
)


async def purge_expired(session: AsyncSession, settings: Settings) -> dict[str, int]:
    """Delete one batch of each kind of expired row; returns how many went.

    Returns empty counts when another process holds the purge lock.
    """
    got_lock = await session.scalar(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": _LOCK})
    counts = {"events": 0, "scheduled_jobs": 0, "idempotency_keys": 0}
    if not got_lock:
        return counts
    days = settings.event_retention_days
    events = await session.execute(_OLD_EVENTS, {"days": days, "batch": BATCH})
    counts["events"] = len(events.all())
    jobs = await session.execute(_OLD_JOBS, {"days": days, "batch": BATCH})
    counts["scheduled_jobs"] = int(jobs.rowcount)  # type: ignore[attr-defined]
    keys = await session.execute(
        _OLD_KEYS, {"hours": settings.idempotency_retention_hours, "batch": BATCH}
    )
    counts["idempotency_keys"] = int(keys.rowcount)  # type: ignore[attr-defined]
    if any(counts.values()):
        log.info("purged expired rows", extra=counts)
    return counts
