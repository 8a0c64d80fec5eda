"""The live connections a process works with: engine, sessions, Redis, queue names."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from arq.connections import ArqRedis, RedisSettings, create_pool
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from shared.config import Settings
from shared.crypto import FieldCipher, get_cipher
from shared.db import create_engine, create_sessionmaker
from shared.observability import count_in


def redis_settings(redis_url: str) -> RedisSettings:
    settings = RedisSettings.from_dsn(redis_url)
    settings.conn_timeout = 5
    settings.conn_retries = 3
    return settings


@dataclass
class Runtime:
    settings: Settings
    database_url: str
    redis_url: str
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    redis: ArqRedis

    @classmethod
    async def open(cls, settings: Settings, database_url: str, redis_url: str) -> Runtime:
        engine = create_engine(database_url, pool_size=settings.db_pool_size)
        redis = await create_pool(redis_settings(redis_url))
        runtime = cls(
            settings=settings,
            database_url=database_url,
            redis_url=redis_url,
            engine=engine,
            sessionmaker=create_sessionmaker(engine),
            redis=redis,
        )
        # Every session knows its runtime, so event handlers and service code
        # reach the cipher or Redis without globals (see runtime_of).
        runtime.sessionmaker.configure(info={"runtime": runtime})
        # The events this process publishes and handles count towards the
        # installation's totals, which any API's /metrics shows.
        count_in(redis, settings.queue_prefix)
        return runtime

    @cached_property
    def cipher(self) -> FieldCipher:
        """Encryption of personal data and secrets at rest (keys from SCRM_SECRET_KEY)."""
        return get_cipher(self.settings)

    def queue_name(self, service: str) -> str:
        return queue_name(self.settings.queue_prefix, service)

    async def close(self) -> None:
        await self.redis.aclose()
        await self.engine.dispose()


def queue_name(prefix: str, service: str) -> str:
    return f"{prefix}:queue:{service}"


def runtime_of(session: AsyncSession) -> Runtime:
    """The runtime a session was opened from."""
    runtime = session.info.get("runtime")
    if not isinstance(runtime, Runtime):
        raise RuntimeError("this session was not opened from a Runtime")
    return runtime
