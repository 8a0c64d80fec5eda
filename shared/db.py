"""Database engine, declarative base, and the one-transaction-per-unit-of-work rule.

A request or a job gets one `AsyncSession` whose transaction is committed once,
at the end, by whoever opened it (`get_session` for HTTP, `unit_of_work` for
jobs). Service code calls `flush()` when it needs ids, never `commit()`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, DateTime, MetaData, any_, bindparam, event, func
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.config import sqlalchemy_url

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        datetime: DateTime(timezone=True),
        uuid.UUID: PG_UUID(as_uuid=True),
    }


class TenantScoped:
    """Mixin for every tenant-owned table: the `tenant_id` every query filters on."""

    tenant_id: Mapped[uuid.UUID] = mapped_column(index=True)


def one_of(column: Any, values: Iterable[Any]) -> ColumnElement[bool]:
    """`column = ANY(:array)`: one bound array, rather than `IN` with a parameter a
    value, so a statement over many values stays one prepared statement whatever
    their number (and binds fast)."""
    return column == any_(bindparam(None, list(values), type_=ARRAY(column.type)))  # type: ignore[no-any-return]


def utcnow_column() -> Mapped[datetime]:
    return mapped_column(server_default=func.now())


# A pooled connection idle for longer than this is pinged before it is handed out.
# Busy connections are not: a ping per checkout costs as many round trips as a
# short transaction (SQLAlchemy's pre-ping on asyncpg is BEGIN, ";", ROLLBACK).
PING_AFTER_IDLE_SECONDS = 5.0
_CHECKED_IN_AT = "scrm_checked_in_at"


def create_engine(database_url: str, *, pool_size: int = 10, **kwargs: Any) -> AsyncEngine:
    engine = create_async_engine(
        sqlalchemy_url(database_url),
        pool_size=pool_size,
        max_overflow=pool_size,
        **kwargs,
    )
    _ping_idle_connections(engine)
    return engine


def _ping_idle_connections(engine: AsyncEngine) -> None:
    """Pessimistic disconnect handling for connections that sat in the pool.

    A connection dropped while idle (server restart, failover, idle timeout on a
    proxy) is found by the ping and replaced: raising DisconnectionError from the
    checkout hook makes the pool discard it and connect anew (up to three times).
    A connection used within the last PING_AFTER_IDLE_SECONDS is handed out as is;
    if it died since, the statement fails, SQLAlchemy invalidates the whole pool
    (is_disconnect) and the caller's unit of work fails once with a clear error.
    """
    sync_engine = engine.sync_engine
    dialect = sync_engine.dialect

    def on_checkin(_dbapi_connection: Any, record: Any) -> None:
        if record is not None:
            record.info[_CHECKED_IN_AT] = time.monotonic()

    def on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        checked_in_at = record.info.get(_CHECKED_IN_AT)
        # A fresh connection has never been checked in: nothing to check.
        if checked_in_at is None or time.monotonic() - checked_in_at < PING_AFTER_IDLE_SECONDS:
            return
        try:
            dialect.do_ping(dbapi_connection)
        except Exception as error:
            record.info.pop(_CHECKED_IN_AT, None)
            raise DisconnectionError(f"pooled connection failed its ping: {error}") from error

    event.listen(sync_engine, "checkin", on_checkin)
    event.listen(sync_engine, "checkout", on_checkout)


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


@asynccontextmanager
async def unit_of_work(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """One transaction for a job or a command: committed if the block succeeds."""
    async with sessionmaker() as session, session.begin():
        yield session
