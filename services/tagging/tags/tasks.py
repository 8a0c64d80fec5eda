"""Jobs of the tagging service's tags part: the drop sweep of decayed contact tags."""

from __future__ import annotations

import logging

from sqlalchemy.ext.asyncio import AsyncSession

from services.tagging import clock
from services.tagging.tags import service
from shared.scheduler import ScheduledWork, recurring_job

log = logging.getLogger("scrm.tagging.tags")

# Rows per statement, and statements per run: what is left goes at the next run.
SWEEP_BATCH = 5000
SWEEP_ROUNDS = 10


@recurring_job("tagging", "drop_decayed_tags", every_seconds=60)
async def drop_decayed_tags(session: AsyncSession, work: ScheduledWork) -> None:
    """Remove the contact tags whose decayed weight fell below their group's floor
    (tag.removed, reason "decayed"): only the rows due, through the drops_at index."""
    dropped = await service.sweep_decayed(
        session, clock.now(), batch=SWEEP_BATCH, rounds=SWEEP_ROUNDS
    )
    if dropped:
        log.info("decayed tags dropped", extra={"dropped": dropped})
