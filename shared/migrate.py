"""Schema migrations (one Alembic history in `migrations/`), run by `scrm migrate`/`scrm up`."""

from __future__ import annotations

import importlib
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import MetaData, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

import migrations
from shared.events import SERVICES

# Any constant will do: it only has to be the same in every process.
_MIGRATION_LOCK = 0x5C12_0001


def target_metadata() -> MetaData:
    """The metadata of every table: the platform's and each service's."""
    from shared import models  # noqa: F401  (registers the platform tables)
    from shared.db import Base

    for service in SERVICES:
        importlib.import_module(f"services.{service}.models")
    return Base.metadata


def alembic_config(url: str | None = None) -> Config:
    directory = Path(migrations.__file__).parent
    config = Config()
    config.set_main_option("script_location", str(directory))
    if url:
        config.set_main_option("sqlalchemy.url", url)
    return config


def _upgrade(connection: Connection, revision: str) -> None:
    # Several processes may start at once (compose, replicas): one migrates,
    # the others wait for it and then find nothing to do.
    connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade, revision)
