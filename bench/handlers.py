"""The handler the bus benchmark measures: one row per event, stamped by the database."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from shared.events import Event, subscribe

SCHEMA = """CREATE TABLE IF NOT EXISTS bench_handled (
    event_id bigint PRIMARY KEY,
    created_at timestamptz NOT NULL,
    handled_at timestamptz NOT NULL DEFAULT clock_timestamp())"""


@subscribe("points", "bench.tick", name="bench.record")
async def record_tick(session: AsyncSession, event: Event) -> None:
    await session.execute(
        text("INSERT INTO bench_handled (event_id, created_at) VALUES (:id, :created)"),
        {"id": event.id, "created": event.created_at},
    )
