"""Tag rules fired as events are applied: once per source event."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from services.tagging.facts import Changes
from services.tagging.profile.ingest import AppliedEvent


async def apply(
    session: AsyncSession, applied: list[AppliedEvent], changes: Changes, now: datetime
) -> None:
    """Fire the tenant's active rules that the applied events satisfy."""
