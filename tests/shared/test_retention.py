"""Expired bus rows go; dead letters, fresh rows and the audit log stay."""

from __future__ import annotations

from sqlalchemy import text

from shared.db import unit_of_work
from shared.events import publish
from shared.runtime import Runtime
from shared.scheduler import Scheduler
from tests.shared.bus_support import ensure_test_tables, relay_all, work_until_idle


async def count(runtime: Runtime, table: str) -> int:
    async with runtime.engine.connect() as conn:
        return int(await conn.scalar(text(f"SELECT count(*) FROM {table}")) or 0)


async def test_purge_keeps_what_is_still_needed(committed: Runtime) -> None:
    await ensure_test_tables(committed)
    async with unit_of_work(committed.sessionmaker) as session:
        for _ in range(3):
            await publish(session, "test.ping", {}, tenant_id=None)
        await publish(session, "test.fail", {}, tenant_id=None)
    await relay_all(committed)
    await work_until_idle(committed, "points", "tagging")
    async with committed.engine.begin() as conn:
        # Age everything but one event past retention; one old idempotency key, one fresh.
        await conn.execute(
            text(
                "UPDATE outbox_events SET published_at = now() - interval '40 days' "
                "WHERE id <> (SELECT max(id) FROM outbox_events WHERE type = 'test.ping')"
            )
        )
        await conn.execute(
            text(
                "INSERT INTO idempotency_keys (scope, key, request_hash, created_at) VALUES "
                "('s', 'old', '\\x00', now() - interval '4 days'), ('s', 'new', '\\x00', now())"
            )
        )
        await conn.execute(
            text(
                "INSERT INTO audit_log (actor, action, created_at) "
                "VALUES ('x', 'y', now() - interval '5 years')"
            )
        )
    assert await count(committed, "outbox_events") == 4
    purged = await Scheduler(committed).purge()
    assert purged == {"events": 2, "scheduled_jobs": 0, "idempotency_keys": 1}
    async with committed.engine.connect() as conn:
        kept = [
            r[0] for r in await conn.execute(text("SELECT type FROM outbox_events ORDER BY id"))
        ]
        orphans = await conn.scalar(
            text(
                "SELECT count(*) FROM processed_events p WHERE NOT EXISTS "
                "(SELECT 1 FROM outbox_events o WHERE o.id = p.event_id)"
            )
        )
    assert kept == ["test.ping", "test.fail"], "the recent event and the dead letter's event stay"
    assert orphans == 0
    assert await count(committed, "dead_letters") == 1
    assert await count(committed, "idempotency_keys") == 1
    assert await count(committed, "audit_log") == 1
