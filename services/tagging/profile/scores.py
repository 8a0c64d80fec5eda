"""RFM scores, the 8-cell grid, value tiers and the health score."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from services.tagging.facts import Changes


async def recompute(session: AsyncSession, changes: Changes, now: datetime) -> None:
    """Recompute RFM, value tier and health of the contacts whose orders changed."""
