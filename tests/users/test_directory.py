"""The per-process cache of tenants' ingestion settings."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from services.users.directory import (
    UNKNOWN_TTL_SECONDS,
    IngestConfig,
    TenantDirectory,
)
from shared.db import unit_of_work
from shared.errors import NotFound
from shared.runtime import Runtime
from tests.clock import FakeClock
from tests.helpers import make_tenant
from tests.users.support import wecom_tenant


class CountingDirectory(TenantDirectory):
    loads = 0

    async def _load(self, session: AsyncSession, slug: str) -> IngestConfig:
        self.loads += 1
        await asyncio.sleep(0.05)  # a query in flight while more requests arrive
        return await super()._load(session, slug)


async def test_an_expired_entry_is_loaded_once_for_a_flood(committed: Runtime) -> None:
    corp = await wecom_tenant(committed)
    clock = FakeClock()
    directory = CountingDirectory(committed.sessionmaker, committed.cipher, ttl=0.2, clock=clock)
    found = await asyncio.gather(*(directory.get(corp.slug) for _ in range(50)))
    assert directory.loads == 1 and {c.slug for c in found} == {corp.slug}
    clock.advance(0.19)
    assert (await directory.get(corp.slug)).corp_id == found[0].corp_id
    assert directory.loads == 1, "cached"
    clock.advance(0.02)
    await asyncio.gather(*(directory.get(corp.slug) for _ in range(50)))
    assert directory.loads == 2, "expired: one load again"
    directory.forget(corp.slug)
    await directory.get(corp.slug)
    assert directory.loads == 3, "forgotten: loaded anew"


async def test_an_unknown_tenant_fails_every_waiter(committed: Runtime) -> None:
    clock = FakeClock()
    directory = CountingDirectory(committed.sessionmaker, committed.cipher, ttl=60, clock=clock)
    results = await asyncio.gather(
        *(directory.get("nobody-here") for _ in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, NotFound) for r in results) and directory.loads == 1
    clock.advance(UNKNOWN_TTL_SECONDS - 0.1)
    for _ in range(20):
        with pytest.raises(NotFound):
            await directory.get("nobody-here")
    assert directory.loads == 1, "an unknown slug costs one query, not one per request"
    clock.advance(0.2)
    with pytest.raises(NotFound):
        await directory.get("nobody-here")
    assert directory.loads == 2, "remembered for a while only"


async def test_a_tenant_created_after_a_miss_is_found_once_the_miss_expires(
    committed: Runtime,
) -> None:
    clock = FakeClock()
    directory = CountingDirectory(committed.sessionmaker, committed.cipher, ttl=60, clock=clock)
    slug = f"later-{uuid.uuid4().hex[:8]}"
    with pytest.raises(NotFound):
        await directory.get(slug)
    async with unit_of_work(committed.sessionmaker) as session:
        await make_tenant(session, slug)
    with pytest.raises(NotFound):
        await directory.get(slug)
    clock.advance(UNKNOWN_TTL_SECONDS + 0.1)
    assert (await directory.get(slug)).slug == slug
    directory.forget(slug)
    assert (await directory.get(slug)).slug == slug, "forget() drops a miss at once too"


async def test_made_up_slugs_are_remembered_up_to_a_bound(committed: Runtime) -> None:
    directory = CountingDirectory(committed.sessionmaker, committed.cipher, ttl=60, max_unknown=3)
    for slug in ("fake-1", "fake-2", "fake-3", "fake-4"):
        with pytest.raises(NotFound):
            await directory.get(slug)
    assert directory.loads == 4
    with pytest.raises(NotFound):
        await directory.get("fake-4")
    assert directory.loads == 4, "the newest misses are remembered"
    with pytest.raises(NotFound):
        await directory.get("fake-1")
    assert directory.loads == 5, "the oldest made room"
