"""Builds in the tagging worker: a big tenant's segment is `building` until its scheduled
build has run; a build that fails is `failed` with its error and attempts, visible in the
API, and retried with backoff until it succeeds."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import asyncpg  # type: ignore[import-untyped]
import httpx
import pytest
from sqlalchemy import text

from services.tagging import clock
from services.tagging.segments.settings import segment_settings
from shared.config import plain_postgres_url
from shared.db import unit_of_work
from shared.runtime import Runtime
from shared.scheduler import jobs, run_scheduled_job
from tests.helpers import bearer, make_key, make_tenant
from tests.tagging.test_segments_support import add_profile, days

NOW = datetime(2026, 11, 20, 4, 0, tzinfo=UTC)


@pytest.fixture
def worker_builds(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every tenant is big enough for its builds to go to the worker; locks wait 200 ms."""
    monkeypatch.setenv("SCRM_TAGGING_SEGMENTS_INLINE_BUILD_CONTACTS", "0")
    monkeypatch.setenv("SCRM_TAGGING_SEGMENTS_BUILD_LOCK_TIMEOUT_MS", "200")
    segment_settings.cache_clear()
    with clock.use(lambda: NOW):
        yield
    monkeypatch.undo()
    segment_settings.cache_clear()


async def _build_jobs(runtime: Runtime) -> list[tuple[int, str, datetime]]:
    async with runtime.engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT id, status, due_at FROM scheduled_jobs WHERE job = 'segments.build' "
                "ORDER BY id"
            )
        )
        return [tuple(r) for r in rows]  # type: ignore[misc]


async def test_a_failed_build_is_visible_and_retried(
    committed: Runtime, committed_client: httpx.AsyncClient, worker_builds: None
) -> None:
    async with unit_of_work(committed.sessionmaker) as session:
        tenant = await make_tenant(session)
        key = await make_key(session, tenant, "operator")
        contacts = {
            await add_profile(session, tenant.id, created_at=NOW - days(1)) for _ in range(3)
        }
    headers = bearer(key)
    created = await committed_client.post(
        "/v1/segments", json={"name": "all", "rule": {"all": []}}, headers=headers
    )
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "building"
    segment_id = created.json()["id"]
    [(first_job, status, _)] = await _build_jobs(committed)
    assert status == "pending"

    # Another transaction holds the members table: the build's lock wait times out.
    assert committed.settings.database_url
    blocker = await asyncpg.connect(plain_postgres_url(committed.settings.database_url))
    try:
        blocking = blocker.transaction()
        await blocking.start()
        await blocker.execute("LOCK TABLE segment_members IN SHARE MODE")
        await run_scheduled_job({"runtime": committed, "jobs": jobs}, first_job)
        await blocking.rollback()
    finally:
        await blocker.close()

    shown = (await committed_client.get(f"/v1/segments/{segment_id}", headers=headers)).json()
    assert shown["status"] == "failed"
    assert shown["build_attempts"] == 1
    assert "lock" in shown["error"].lower()
    assert shown["member_count"] == 0
    scheduled = await _build_jobs(committed)
    assert [s for _, s, _ in scheduled] == ["done", "pending"]
    retry_job, _, due_at = scheduled[1]
    assert (due_at - NOW).total_seconds() == segment_settings().build_retry_base_seconds

    await run_scheduled_job({"runtime": committed, "jobs": jobs}, retry_job)
    shown = (await committed_client.get(f"/v1/segments/{segment_id}", headers=headers)).json()
    assert shown["status"] == "ready" and shown["error"] is None
    assert shown["member_count"] == len(contacts)
    assert shown["last_built_at"] is not None

    rebuilt = await committed_client.post(f"/v1/segments/{segment_id}/rebuild", headers=headers)
    assert rebuilt.status_code == 202 and rebuilt.json()["status"] == "building"
