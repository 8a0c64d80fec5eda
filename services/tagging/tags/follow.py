"""Contact tags following their contacts: a merged contact's tags move to the
survivor, an erased contact's are removed."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from services.tagging.facts import Changes
from shared.events import Event


async def apply(
    session: AsyncSession, events: list[Event], changes: Changes, now: datetime
) -> None:
    """Apply the batch's contact.merged / contact.erased to contact tags."""
