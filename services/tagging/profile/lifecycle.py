"""Lifecycle stages (SPEC §1): potential → new → active → silent → churned."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from services.tagging.facts import Changes


async def recompute(session: AsyncSession, changes: Changes, now: datetime) -> None:
    """Recompute the stage of every changed contact; publish contact.lifecycle_changed."""
