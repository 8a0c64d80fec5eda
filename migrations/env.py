"""Alembic environment: one history for the whole schema (all services' tables)."""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy.engine import Connection

from shared.migrate import target_metadata

config = context.config


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata(),
        compare_type=True,
        transaction_per_migration=False,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_migrations(connection)
        return
    from shared.db import create_engine

    url = config.get_main_option("sqlalchemy.url") or os.environ.get("DATABASE_URL")
    assert url, "set sqlalchemy.url or pass a connection"

    async def go() -> None:
        engine = create_engine(url)
        async with engine.begin() as conn:
            await conn.run_sync(run_migrations)
        await engine.dispose()

    asyncio.run(go())


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run `scrm migrate`")
run_online()
