"""The live connections a process works with: engine, sessions, Redis, queue names."""

from __future__ import annotations

from dataclasses import dataclass

from arq.connections import ArqRedis, RedisSettings, create_pool
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from shared.config import Settings
from shared.db import create_engine, create_sessionmaker


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
        return cls(
            settings=settings,
            database_url=database_url,
            redis_url=redis_url,
            engine=engine,
            sessionmaker=create_sessionmaker(engine),
            redis=redis,
        )

    def queue_name(self, service: str) -> str:
        return queue_name(self.settings.queue_prefix, service)

    async def close(self) -> None:
        await self.redis.aclose()
        await self.engine.dispose()


def queue_name(prefix: str, service: str) -> str:
    return f"{prefix}:queue:{service}"
