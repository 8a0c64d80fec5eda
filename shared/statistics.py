"""Planner statistics kept fresh for tables that grow faster than autovacuum looks.

A per-event statement ("these 100 contacts") is planned from the table's
statistics. A young table (a new installation, a new tenant, a bulk import) can
grow from a few rows to hundreds of thousands before autovacuum, which looks
once a minute and only after 10% of changes, analyzes it again; meanwhile the
planner, believing the tenant has a handful of rows, scans all of them for
every batch, and a backlog that should drain in seconds takes minutes.

A service names its hot tables with `keep_statistics_fresh(service, *tables)`;
every worker process of that service then checks them every
`CHECK_SECONDS` (`pg_stat_user_tables`, from shared memory: cheap) and runs
`ANALYZE` on a table once it has grown by `MIN_CHANGES` rows and `SHARE` of the
rows it had when last analyzed (updates in place do not count: they leave the
sizes the plans depend on as they were, and autovacuum sees to them). An
advisory lock per table keeps two workers from analyzing the same table at once.
"""

from __future__ import annotations

import asyncio
import logging
import zlib

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from shared.relay import wait_any
from shared.runtime import Runtime
from shared.worker import worker_loop

log = logging.getLogger("scrm.statistics")

CHECK_SECONDS = 2.0
# A table is analyzed again once it has grown by this many rows plus this share.
MIN_CHANGES = 1000
SHARE = 0.2

_STALE = text(
    """
    SELECT s.relname
      FROM pg_stat_user_tables s
      JOIN pg_class c ON c.oid = s.relid
     WHERE s.schemaname = current_schema() AND s.relname = ANY(CAST(:tables AS text[]))
       AND s.n_live_tup >= CAST(:min AS bigint)
                           + (1 + CAST(:share AS float8)) * greatest(c.reltuples, 0)
     ORDER BY s.n_live_tup DESC
    """
)

_TABLES: dict[str, set[str]] = {}


def _lock_key(table: str) -> int:
    return 0x5C12_5000_0000 + zlib.crc32(table.encode())


class StatisticsKeeper:
    """Analyzes a service's hot tables when they outgrow their statistics."""

    def __init__(self, runtime: Runtime, tables: set[str]) -> None:
        self.runtime = runtime
        self.tables = sorted(tables)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.drain()
            except (OSError, SQLAlchemyError, TimeoutError) as exc:
                log.warning("statistics: check failed (%s); trying again", exc)
            await wait_any(stop, None, CHECK_SECONDS)

    async def drain(self) -> int:
        """Analyze the tables that outgrew their statistics; how many it analyzed."""
        done = 0
        # A pooled connection, in autocommit: each ANALYZE stands alone.
        async with self.runtime.engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            stale = await conn.execute(
                _STALE, {"tables": self.tables, "min": MIN_CHANGES, "share": SHARE}
            )
            for (table,) in stale.all():
                key = _lock_key(str(table))
                if not await conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}):
                    continue  # another worker is analyzing it
                try:
                    # The name comes from the service's own list, never from input.
                    await conn.execute(text(f'ANALYZE "{table}"'))
                    done += 1
                finally:
                    await conn.scalar(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        if done:
            log.info("statistics: analyzed %d table(s) that outgrew their statistics", done)
        return done


def keep_statistics_fresh(service: str, *tables: str) -> None:
    """Every worker of `service` keeps the planner statistics of `tables` fresh."""
    known = _TABLES.get(service)
    if known is not None:
        known.update(tables)
        return
    _TABLES[service] = known = set(tables)

    def keeper(runtime: Runtime) -> StatisticsKeeper:
        return StatisticsKeeper(runtime, known)

    keeper.__qualname__ = f"statistics_keeper_{service}"
    worker_loop(service)(keeper)
