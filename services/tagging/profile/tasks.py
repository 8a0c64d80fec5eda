"""Jobs of the tagging service's profile part: the passage of time for lifecycle
stages (every minute, only the profiles due) and the tenants' score boundaries."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from services.tagging import clock
from services.tagging.facts import Changes, Fact
from services.tagging.profile import lifecycle, scores, stage_repository
from services.tagging.segments import live
from shared.scheduler import ScheduledWork, recurring_job

# Profiles claimed per round of the sweep, and rounds per run (the next run goes on).
SWEEP_BATCH = 2000
SWEEP_ROUNDS = 10


async def sweep_due_stages(session: AsyncSession) -> int:
    """Recompute the stages that are due by now (and re-evaluate the segments of those
    that changed); how many profiles were due."""
    total = 0
    for _ in range(SWEEP_ROUNDS):
        now = clock.now()
        due = await stage_repository.claim_due_stages(session, now, SWEEP_BATCH)
        if not due:
            break
        total += len(due)
        changes = Changes()
        for tenant_id, contact_id in due:
            changes.add(tenant_id, contact_id)
        await lifecycle.recompute(session, changes, now)
        await live.reevaluate(session, changes, now)
        if len(due) < SWEEP_BATCH:
            break
    return total


@recurring_job("tagging", "tagging.lifecycle_sweep", every_seconds=60)
async def lifecycle_sweep(session: AsyncSession, work: ScheduledWork) -> None:
    await sweep_due_stages(session)


async def rescore(session: AsyncSession) -> dict[uuid.UUID, dict[uuid.UUID, set[Fact]]]:
    """Every tenant's score boundaries and every live contact's scores, at now; the
    segments reading a changed score re-evaluated. Returns what changed, per tenant."""
    now = clock.now()
    changes = Changes()
    await scores.rescore_tenants(session, changes, now)
    changed = {tenant: changes.contacts(tenant) for tenant in changes.tenants()}
    await live.reevaluate(session, changes, now)
    return changed


@recurring_job("tagging", "tagging.score_boundaries", every_seconds=3600)
async def score_boundaries(session: AsyncSession, work: ScheduledWork) -> None:
    await rescore(session)
