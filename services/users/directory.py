"""Per-tenant ingestion settings, cached in-process for the callback hot path.

A callback or webhook must be verified without a settings query per request;
entries live for `SCRM_TENANT_CACHE_SECONDS` (and are dropped at once in the
process that changes them), so a rotated secret takes effect everywhere
within that time.
"""

from __future__ import annotations

import time
import uuid
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


class TenantDirectory:
    def __init__(
        self, sessionmaker: async_sessionmaker[AsyncSession], cipher: FieldCipher, ttl: float
    ) -> None:
        self.sessionmaker = sessionmaker
        self.cipher = cipher
        self.ttl = ttl
        self._entries: dict[str, tuple[float, IngestConfig]] = {}

    async def get(self, slug: str) -> IngestConfig:
        """The tenant's ingestion settings; NotFound for an unknown slug."""
        now = time.monotonic()
        cached = self._entries.get(slug)
        if cached is not None and cached[0] > now:
            return cached[1]
        async with self.sessionmaker() as session:
            config = await self._load(session, slug)
        self._entries[slug] = (now + self.ttl, config)
        return config

    def forget(self, slug: str) -> None:
        self._entries.pop(slug, None)

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
