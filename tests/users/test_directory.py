"""The per-process cache of tenants' ingestion settings."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from services.users.directory import IngestConfig, TenantDirectory
from shared.errors import NotFound
from shared.runtime import Runtime
from tests.clock import FakeClock
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
    directory = CountingDirectory(committed.sessionmaker, committed.cipher, ttl=60)
    results = await asyncio.gather(
        *(directory.get("nobody-here") for _ in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, NotFound) for r in results) and directory.loads == 1
    with pytest.raises(NotFound):
        await directory.get("nobody-here")
    assert directory.loads == 2, "not cached: a tenant created later is found"
