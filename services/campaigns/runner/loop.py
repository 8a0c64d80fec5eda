"""The journey runner: every campaigns worker process runs one (`worker_loop`).

It finds the live campaigns with enrolments due (`due_at <= now`, through the
partial index on (campaign_id, due_at)), claims up to BATCH of them with
`FOR UPDATE SKIP LOCKED` (so processes share the work and no enrolment runs
twice at once), takes them through their steps (engine.py) and commits, one
transaction per batch. A wait is a row with a due time: never run early (the claim
asks `due_at <= now` on the service's clock), never twice (the row lock, and the
batch's writes commit with the step's new position). Enrolments of a paused
campaign stay where they are until it resumes.

The runner wakes on `NOTIFY scrm_campaigns` (sent when contacts enrol or a
wait_for's event arrives) and polls every `idle_poll_seconds` for waits falling due.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.campaigns import clock
from services.campaigns.enrolment import schedule
from services.campaigns.runner import engine
from services.campaigns.runner.engine import Enrolment
from services.campaigns.runner.wake import NOTIFY_CHANNEL
from shared.db import unit_of_work
from shared.loops import ListeningLoop

log = logging.getLogger("scrm.campaigns.runner")

BATCH = 500

_DUE_CAMPAIGNS = text(
    """
    SELECT c.id FROM campaigns c
     WHERE c.status = 'live'
       AND EXISTS (SELECT 1 FROM campaign_enrolments e
                    WHERE e.campaign_id = c.id AND e.status IN ('active', 'waiting')
                      AND e.due_at <= :now)
     ORDER BY c.id
    """
)

_CLAIM = text(
    """
    SELECT e.id, e.tenant_id, e.campaign_id, e.version, e.contact_id, e.status, e.step_id,
           e.due_at, e.seq, e.variant, e.context, e.entered_at
      FROM campaign_enrolments e
     WHERE e.campaign_id = :campaign AND e.status IN ('active', 'waiting')
       AND e.due_at <= :now
     ORDER BY e.due_at, e.id
     LIMIT :limit
       FOR UPDATE SKIP LOCKED
    """
)

_LIVE = text("SELECT status FROM campaigns WHERE id = :campaign FOR SHARE")

_DEFINITIONS = text(
    "SELECT version, definition FROM campaign_versions "
    "WHERE campaign_id = :campaign AND version = ANY(CAST(:versions AS int[]))"
)


async def run_campaign_batch(session: AsyncSession, campaign_id: int, limit: int = BATCH) -> int:
    """Claim and run one batch of a campaign's due enrolments; how many it took."""
    status = await session.scalar(_LIVE, {"campaign": campaign_id})
    if status != "live":
        return 0
    now = clock.now()
    rows = (
        await session.execute(_CLAIM, {"campaign": campaign_id, "now": now, "limit": limit})
    ).all()
    if not rows:
        return 0
    enrolments = [
        Enrolment(
            id=r.id,
            tenant_id=r.tenant_id,
            campaign_id=r.campaign_id,
            version=r.version,
            contact_id=r.contact_id,
            status=r.status,
            step_id=r.step_id,
            due_at=r.due_at,
            seq=r.seq,
            variant=r.variant,
            context=dict(r.context or {}),
            entered_at=r.entered_at,
        )
        for r in rows
    ]
    definitions: dict[int, dict[str, Any]] = {
        int(v): d
        for v, d in await session.execute(
            _DEFINITIONS,
            {"campaign": campaign_id, "versions": sorted({e.version for e in enrolments})},
        )
    }
    await engine.run(session, campaign_id, definitions, enrolments, now)
    return len(rows)


class JourneyRunner(ListeningLoop):
    channel = NOTIFY_CHANNEL

    async def step(self) -> int:
        """Fire the schedule triggers due, then one batch for every live campaign with
        enrolments due; how many ran."""
        try:
            async with unit_of_work(self.runtime.sessionmaker) as session:
                await schedule.fire_due(session, clock.now())
        except Exception:
            log.exception("journey runner: firing the schedule triggers failed")
        async with unit_of_work(self.runtime.sessionmaker) as session:
            campaigns = list(await session.scalars(_DUE_CAMPAIGNS, {"now": clock.now()}))
        total = 0
        for campaign_id in campaigns:
            try:
                async with unit_of_work(self.runtime.sessionmaker) as session:
                    total += await run_campaign_batch(session, campaign_id)
            except Exception:
                log.exception("journey runner: a batch of campaign %s failed", campaign_id)
        return total
