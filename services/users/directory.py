"""Per-tenant ingestion settings, cached in-process for the callback hot path.

A callback or webhook must be verified without a settings query per request;
entries live for `SCRM_TENANT_CACHE_SECONDS` (and are dropped at once in the
process that changes them), so a rotated secret takes effect everywhere
within that time.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.users import repository
from services.users.wecom_crypto import WeComCrypto
from shared.crypto import FieldCipher
from shared.errors import NotFound
from shared.models import Tenant


@dataclass(frozen=True)
class IngestConfig:
    tenant_id: uuid.UUID
    slug: str
    corp_id: str | None
    wecom: WeComCrypto | None
    webhook_secrets: tuple[bytes, ...]


# An unknown slug is remembered for this long (at most the cache's TTL), so that a
# flood of requests naming tenants that do not exist costs no query each, and an
# unknown tenant is answered as fast as a known one (its answer tells nothing).
UNKNOWN_TTL_SECONDS = 5.0
# ... and for at most this many slugs: made-up slugs must not fill memory.
MAX_UNKNOWN_SLUGS = 10_000


class TenantDirectory:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        cipher: FieldCipher,
        ttl: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_unknown: int = MAX_UNKNOWN_SLUGS,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.max_unknown = max_unknown
        self.cipher = cipher
        self.ttl = ttl
        self._clock = clock
        self._entries: dict[str, tuple[float, IngestConfig]] = {}
        self._loading: dict[str, asyncio.Future[IngestConfig]] = {}
        self._changes: dict[str, int] = {}
        self._unknown: dict[str, float] = {}  # slug -> until when it is known not to exist

    async def get(self, slug: str) -> IngestConfig:
        """The tenant's ingestion settings; NotFound for an unknown slug."""
        now = self._clock()
        cached = self._entries.get(slug)
        if cached is not None and cached[0] > now:
            return cached[1]
        unknown_until = self._unknown.get(slug)
        if unknown_until is not None:
            if unknown_until > now:
                raise NotFound(f"no tenant {slug!r}")
            del self._unknown[slug]
        # One load per slug at a time: when an entry expires under a flood, the
        # requests in flight wait for that one query instead of each running it.
        loading = self._loading.get(slug)
        if loading is None:
            loading = asyncio.ensure_future(self._refresh(slug))
            self._loading[slug] = loading
            loading.add_done_callback(
                lambda done: (
                    self._loading.pop(slug, None) if self._loading.get(slug) is done else None
                )
            )
        return await asyncio.shield(loading)

    async def _refresh(self, slug: str) -> IngestConfig:
        changes = self._changes.get(slug, 0)
        try:
            async with self.sessionmaker() as session:
                config = await self._load(session, slug)
        except NotFound:
            if self._changes.get(slug, 0) == changes:
                self._remember_unknown(slug)
            raise
        if self._changes.get(slug, 0) == changes:  # not read before a change: keep it
            self._entries[slug] = (self._clock() + self.ttl, config)
        return config

    def _remember_unknown(self, slug: str) -> None:
        if len(self._unknown) >= self.max_unknown:
            self._unknown.pop(next(iter(self._unknown)))  # the oldest
        self._unknown[slug] = self._clock() + min(UNKNOWN_TTL_SECONDS, self.ttl)

    def forget(self, slug: str) -> None:
        self._unknown.pop(slug, None)
        self._entries.pop(slug, None)
        self._loading.pop(slug, None)
        self._changes[slug] = self._changes.get(slug, 0) + 1

    async def _load(self, session: AsyncSession, slug: str) -> IngestConfig:
        tenant = await session.scalar(select(Tenant).where(Tenant.slug == slug))
        if tenant is None:
            raise NotFound(f"no tenant {slug!r}")
        settings = await repository.wecom_settings(session, tenant.id)
        wecom = None
        corp_id = None
        if settings is not None:
            context = repository.secret_context(tenant.id)
            corp_id = settings.corp_id
            wecom = WeComCrypto(
                self.cipher.decrypt(settings.token_enc, context=context + b"token"),
                self.cipher.decrypt(settings.aes_key_enc, context=context + b"aes_key"),
                settings.corp_id,
            )
        webhook_context = repository.secret_context(tenant.id) + b"webhook"
        secrets = tuple(
            self.cipher.decrypt(s.secret_enc, context=webhook_context).encode()
            for s in await repository.active_webhook_secrets(session, tenant.id)
        )
        return IngestConfig(tenant.id, slug, corp_id, wecom, secrets)
