"""The pool hands out live connections: one killed while idle is replaced unseen."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from shared import db


async def _backend_pid(engine: object) -> int:
    async with engine.connect() as conn:  # type: ignore[attr-defined]
        return int(await conn.scalar(text("SELECT pg_backend_pid()")))


async def test_a_connection_killed_while_idle_is_replaced(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = db.create_engine(database_url, pool_size=1)
    killer = db.create_engine(database_url, pool_size=1)
    try:
        first = await _backend_pid(engine)
        async with killer.connect() as conn:
            assert await conn.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
        # Idle "long enough": the next checkout pings, finds it dead, and reconnects.
        monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 0.0)
        second = await _backend_pid(engine)
        assert second != first
    finally:
        await engine.dispose()
        await killer.dispose()


async def test_a_busy_connection_is_not_pinged(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Within the idle window the checkout sends nothing: the killed connection is
    handed out and the statement fails (the pool then starts afresh)."""
    engine = db.create_engine(database_url, pool_size=1)
    killer = db.create_engine(database_url, pool_size=1)
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 3600.0)
    try:
        first = await _backend_pid(engine)
        async with killer.connect() as conn:
            assert await conn.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
        with pytest.raises(DBAPIError):
            await _backend_pid(engine)
        assert await _backend_pid(engine) != first
    finally:
        await engine.dispose()
        await killer.dispose()
