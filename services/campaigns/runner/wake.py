"""Waking the journey runners: `NOTIFY scrm_campaigns`, delivered when the
transaction that enrolled contacts (or moved them on) commits."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

NOTIFY_CHANNEL = "scrm_campaigns"


async def notify(session: AsyncSession) -> None:
    await session.execute(text(f"NOTIFY {NOTIFY_CHANNEL}"))
