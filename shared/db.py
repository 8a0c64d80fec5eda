"""Database engine, declarative base, and the one-transaction-per-unit-of-work rule.

A request or a job gets one `AsyncSession` whose transaction is committed once,
at the end, by whoever opened it (`get_session` for HTTP, `unit_of_work` for
jobs). Service code calls `flush()` when it needs ids, never `commit()`.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import DateTime, MetaData, func
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
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


def utcnow_column() -> Mapped[datetime]:
    return mapped_column(server_default=func.now())


def create_engine(database_url: str, *, pool_size: int = 10, **kwargs: Any) -> AsyncEngine:
    return create_async_engine(
        sqlalchemy_url(database_url),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        **kwargs,
    )


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


@asynccontextmanager
async def unit_of_work(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """One transaction for a job or a command: committed if the block succeeds."""
    async with sessionmaker() as session, session.begin():
        yield session


async def _request_session(request: Request) -> AsyncIterator[AsyncSession]:
    sessionmaker: async_sessionmaker[AsyncSession] = request.app.state.runtime.sessionmaker
    async with unit_of_work(sessionmaker) as session:
        yield session


# scope="function": the commit happens when the endpoint returns and before the
# response is sent, so a failed commit becomes an error response, never a 200
# for a change that was not saved.
SessionDep = Annotated[AsyncSession, Depends(_request_session, scope="function")]
get_session = _request_session
