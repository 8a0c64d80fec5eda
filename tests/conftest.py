"""Test harness: real PostgreSQL and Redis, never mocks of our own storage or queue.

Servers: TEST_DATABASE_URL / TEST_REDIS_URL when set, else the local servers
at 127.0.0.1:5432 / 6379 when reachable, else the embedded ones. Each run gets
its own database (dropped at the end) and its own queue prefix, so runs never
see each other's data. A test gets a session inside a transaction that is
rolled back; tests that need committed data (the bus) use `committed`, which
empties every table afterwards.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from shared import migrate
from shared.app import create_app
from shared.config import Settings, plain_postgres_url
from shared.deps import get_session
from shared.events import SERVICES, load_subscriptions
from shared.runtime import Runtime

ROOT = Path(__file__).resolve().parents[1]
RUN_ID = f"{os.getpid()}_{uuid.uuid4().hex[:6]}"


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture(scope="session")
def server_urls() -> Iterator[tuple[str, str]]:
    """(admin database URL, Redis URL) of the servers this run uses."""
    db_url = os.environ.get("TEST_DATABASE_URL")
    redis_url = os.environ.get("TEST_REDIS_URL")
    embedded = None
    if not db_url and _reachable("127.0.0.1", 5432):
        db_url = "postgresql://postgres@127.0.0.1:5432/postgres"
    if not redis_url and _reachable("127.0.0.1", 6379):
        redis_url = "redis://127.0.0.1:6379/15"
    if not db_url or not redis_url:
        from shared.embedded import EmbeddedServers

        embedded = EmbeddedServers(ROOT / ".scrm-test")
        urls = embedded.acquire()
        db_url = db_url or urls.database_url
        redis_url = redis_url or urls.redis_url
    try:
        yield db_url, redis_url
    finally:
        if embedded is not None:
            embedded.release()


@pytest.fixture(scope="session")
async def database_url(server_urls: tuple[str, str]) -> AsyncIterator[str]:
    admin_url, _ = server_urls
    name = f"scrm_test_{RUN_ID}"
    conn = await asyncpg.connect(plain_postgres_url(admin_url))
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    yield _with_database(admin_url, name)
    conn = await asyncpg.connect(plain_postgres_url(admin_url))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def settings(server_urls: tuple[str, str], database_url: str, tmp_path_factory: Any) -> Settings:
    return Settings(
        database_url=database_url,
        redis_url=server_urls[1],
        queue_prefix=f"scrmtest{RUN_ID}",
        data_dir=tmp_path_factory.mktemp("data"),
        secret_key="x" * 40,
        event_max_attempts=3,
        event_retry_base_seconds=0.02,
        worker_poll_seconds=0.01,
        db_pool_size=20,
    )


@pytest.fixture(scope="session")
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    assert settings.database_url and settings.redis_url
    rt = await Runtime.open(settings, settings.database_url, settings.redis_url)
    await migrate.upgrade(rt.engine)
    load_subscriptions()
    yield rt
    keys = [k async for k in rt.redis.scan_iter(match=f"{settings.queue_prefix}:*")]
    if keys:
        await rt.redis.delete(*keys)
    await rt.close()


@pytest.fixture
async def session(runtime: Runtime) -> AsyncIterator[AsyncSession]:
    """A session whose every change is rolled back after the test."""
    async with runtime.engine.connect() as conn:
        transaction = await conn.begin()
        db = AsyncSession(
            bind=conn,
            join_transaction_mode="create_savepoint",
            expire_on_commit=False,
            info={"runtime": runtime},
        )
        try:
            yield db
        finally:
            await db.close()
            await transaction.rollback()


@pytest.fixture
async def client(runtime: Runtime, session: AsyncSession) -> AsyncIterator[httpx.AsyncClient]:
    """HTTP client on the app, every request inside the test's rolled-back transaction."""
    app = create_app(SERVICES, runtime)

    async def test_session() -> AsyncIterator[AsyncSession]:
        async with session.begin_nested():
            yield session

    app.dependency_overrides[get_session] = test_session
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


@pytest.fixture(scope="session")
async def emptying_sql(runtime: Runtime) -> str:
    """One round trip that empties every table and restarts every sequence.

    DELETE, not TRUNCATE: a TRUNCATE of every table costs a new file per table and
    takes longer than most tests. Tables whose triggers refuse deletes (the
    append-only ledger) are truncated, and only when they hold rows.
    """
    tables = [t.name for t in reversed(migrate.target_metadata().sorted_tables)]
    async with runtime.engine.connect() as conn:
        guarded = set(
            (
                await conn.execute(
                    text(
                        "SELECT DISTINCT c.relname FROM pg_trigger t"
                        " JOIN pg_class c ON c.oid = t.tgrelid WHERE NOT t.tgisinternal"
                    )
                )
            ).scalars()
        )
    truncations = "".join(
        f"IF EXISTS (SELECT 1 FROM {name}) THEN TRUNCATE {name} CASCADE; END IF; "
        for name in tables
        if name in guarded
    )
    statements = [f"DO $$ BEGIN {truncations}END $$"] if truncations else []
    statements += [f"DELETE FROM {name}" for name in tables]
    statements.append(
        "SELECT setval(c.oid, 1, false) FROM pg_class c"
        " WHERE c.relkind = 'S' AND c.relnamespace = current_schema()::regnamespace"
    )
    return "; ".join(statements)


async def _empty(runtime: Runtime, emptying_sql: str) -> None:
    async with runtime.engine.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None
        await raw.execute(emptying_sql)  # several statements, one implicit transaction
    for service in SERVICES:
        await runtime.redis.delete(runtime.queue_name(service))
    # And the arq keys of this run's jobs: ids restart with the sequences, and arq
    # ignores an enqueue whose job id still has a key (a scheduled job's id names
    # its scheduled_jobs row), so a job left by an earlier test would hide a new one.
    prefix = runtime.settings.queue_prefix
    stale = [k async for k in runtime.redis.scan_iter(match=f"arq:*{prefix}:*", count=1000)]
    if stale:
        await runtime.redis.delete(*stale)


@pytest.fixture
async def committed(runtime: Runtime, emptying_sql: str) -> AsyncIterator[Runtime]:
    """For tests that need real commits: the runtime, every table empty before and after.

    Before too: ingestion writes outside the rolled-back session (its own autocommit
    statements), so a test on `client` that stores an event leaves it behind.
    """
    await _empty(runtime, emptying_sql)
    yield runtime
    await _empty(runtime, emptying_sql)


@pytest.fixture
async def committed_client(committed: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    """HTTP client whose requests commit, as in production (one transaction each)."""
    app = create_app(SERVICES, committed)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


@pytest.fixture(scope="session")
def scrm_env(settings: Settings) -> dict[str, str]:
    """Environment for `scrm` subprocesses pointing at this run's database and queues."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("SCRM_", "DATABASE_", "REDIS_"))
    }
    assert settings.database_url and settings.redis_url
    env.update(
        DATABASE_URL=settings.database_url,
        REDIS_URL=settings.redis_url,
        SCRM_QUEUE_PREFIX=settings.queue_prefix,
        SCRM_SECRET_KEY="x" * 40,
        SCRM_DATA_DIR=str(settings.data_dir),
        SCRM_EVENT_MAX_ATTEMPTS=str(settings.event_max_attempts),
        SCRM_EVENT_RETRY_BASE_SECONDS=str(settings.event_retry_base_seconds),
        SCRM_WORKER_POLL_SECONDS="0.01",
        SCRM_EXTRA_TASK_MODULES="tests.shared.bus_handlers",
        PYTHONPATH=str(ROOT),
    )
    return env
