"""Schedule triggers: a cron in the tenant's time zone over a segment.

The journey runner asks, each round, which live schedule journeys have a firing due:
the latest time of their cron (in the tenant's zone) at or before now, later than
their last firing and than the moment they went live. Each firing enrols the
segment's members as they are then, in one statement, as an occurrence of its own
(`schedule:<the firing's time>`), under the journey's re-entry policy; the firing is
recorded with the campaign row locked, so two runners never fire it twice. Firings
missed while no runner ran are not made up: only the latest one is fired.
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from croniter import croniter  # type: ignore[import-untyped]
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services import tagging
from services.campaigns.enrolment import repository
from services.campaigns.enrolment.service import enrol
from services.campaigns.journeys import repository as journeys

_LIVE_SCHEDULES = text(
    """
    SELECT c.id, c.tenant_id, c.version, c.live_since, c.fired_at, v.definition, t.timezone
      FROM campaigns c
      JOIN campaign_versions v ON v.campaign_id = c.id AND v.version = c.version
      JOIN tenants t ON t.id = c.tenant_id
     WHERE c.status = 'live' AND c.trigger_type = 'schedule'
     ORDER BY c.id
       FOR UPDATE OF c SKIP LOCKED
    """
)


def latest_firing(cron: str, now: datetime, timezone: str) -> datetime:
    """The cron's latest time at or before `now`, read in the tenant's zone."""
    local = now.astimezone(ZoneInfo(timezone))
    if croniter.match(cron, local.replace(second=0, microsecond=0)) and local.second == 0:
        return local
    found: datetime = croniter(cron, local).get_prev(datetime)
    return found


async def fire_due(session: AsyncSession, now: datetime) -> int:
    """Fire every live schedule journey whose firing is due; how many contacts entered."""
    entered = 0
    for row in (await session.execute(_LIVE_SCHEDULES)).all():
        trigger = row.definition["trigger"]
        firing = latest_firing(trigger["cron"], now, row.timezone or "Asia/Shanghai")
        after = max(t for t in (row.fired_at, row.live_since) if t is not None)
        if firing <= after:
            continue
        campaign = await journeys.get_campaign(session, row.tenant_id, row.id)
        assert campaign is not None
        source = repository.of_occurrence(
            tagging.segment_members(row.tenant_id, int(trigger["segment_id"])),
            f"schedule:{firing.isoformat()}",
        )
        entered += await enrol(session, campaign, row.definition, source, now)
        await journeys.set_fields(session, row.id, fired_at=firing)
    return entered
