"""The statistics keeper analyzes a hot table once it outgrows its statistics, not before."""

from __future__ import annotations

import uuid

import asyncpg  # type: ignore[import-untyped]
import pytest

from shared import statistics
from shared.config import plain_postgres_url
from shared.runtime import Runtime
from shared.statistics import StatisticsKeeper
from shared.worker import worker_loops

pytestmark = pytest.mark.asyncio


async def _grow(conn: asyncpg.Connection, table: str, rows: int) -> None:
    await conn.execute(f"INSERT INTO {table} (v) SELECT g FROM generate_series(1, {rows}) g")
    # This backend's counts reach pg_stat_user_tables now, not within the next second.
    await conn.execute("SELECT pg_stat_force_next_flush()")


async def _analyzed_rows(conn: asyncpg.Connection, table: str) -> float:
    return float(await conn.fetchval("SELECT reltuples FROM pg_class WHERE relname = $1", table))


async def test_a_growing_table_is_analyzed_each_time_it_outgrows_its_statistics(
    runtime: Runtime,
) -> None:
    table = f"stats_probe_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(plain_postgres_url(runtime.database_url))
    try:
        await conn.execute(f"CREATE TABLE {table} (v int) WITH (autovacuum_enabled = false)")
        keeper = StatisticsKeeper(runtime, {table})
        await _grow(conn, table, statistics.MIN_CHANGES - 10)
        assert await keeper.drain() == 0  # young and small: not yet
        await _grow(conn, table, 20)
        assert await keeper.drain() == 1
        assert await _analyzed_rows(conn, table) == statistics.MIN_CHANGES + 10
        assert await keeper.drain() == 0  # fresh again
        # Updates in place leave the sizes as they were: no analyze for them.
        await conn.execute(f"UPDATE {table} SET v = v + 1")
        await conn.execute("SELECT pg_stat_force_next_flush()")
        assert await keeper.drain() == 0
        # It must grow by MIN_CHANGES and SHARE of what it had: 1,010 + 202 + 1,000.
        await _grow(conn, table, 1100)
        assert await keeper.drain() == 0
        await _grow(conn, table, 200)
        assert await keeper.drain() == 1
        assert await _analyzed_rows(conn, table) == statistics.MIN_CHANGES + 10 + 1300
    finally:
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await conn.close()


async def test_a_table_another_worker_is_analyzing_is_left_to_it(runtime: Runtime) -> None:
    table = f"stats_probe_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(plain_postgres_url(runtime.database_url))
    try:
        await conn.execute(f"CREATE TABLE {table} (v int) WITH (autovacuum_enabled = false)")
        await _grow(conn, table, statistics.MIN_CHANGES + 1)
        keeper = StatisticsKeeper(runtime, {table})
        assert await conn.fetchval("SELECT pg_try_advisory_lock($1)", statistics._lock_key(table))
        assert await keeper.drain() == 0
        await conn.fetchval("SELECT pg_advisory_unlock($1)", statistics._lock_key(table))
        assert await keeper.drain() == 1
    finally:
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await conn.close()


async def test_the_services_register_their_hot_tables(runtime: Runtime) -> None:
    import services.points.tasks
    import services.tagging.tasks
    import services.users.tasks  # noqa: F401

    for service, table in (
        ("tagging", "tagging_profiles"),
        ("users", "contacts"),
        ("points", "points_accounts"),
    ):
        keepers = [
            loop for loop in worker_loops(runtime, service) if isinstance(loop, StatisticsKeeper)
        ]
        assert len(keepers) == 1 and table in keepers[0].tables
