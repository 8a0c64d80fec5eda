"""Live segment membership: changed contacts re-evaluated against the segments that
read a changed fact; entries and exits published."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from services.tagging.facts import Changes


async def reevaluate(session: AsyncSession, changes: Changes, now: datetime) -> None:
    """Re-evaluate the changed contacts; publish segment.entered / segment.left."""
