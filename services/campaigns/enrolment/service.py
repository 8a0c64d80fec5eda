"""Rules of the enrolment part: who enters a journey, on which version, at which step.

A contact enters the current version at its entry step, due at once. Exactly once
per (journey, contact, trigger occurrence); the journey's re-entry policy decides
whether a contact who entered before enters again (`once`: never, `once_per_days`:
after N days, `every_time`: on every occurrence). Only a live journey enrols.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from services import tagging, users
from services.campaigns.enrolment import repository
from services.campaigns.journeys import repository as journeys
from services.campaigns.journeys.definition import JourneyError
from services.campaigns.journeys.models import Campaign
from services.campaigns.journeys.service import CampaignStatusConflict
from services.campaigns.runner.wake import notify
from shared.errors import NotFound


async def _live(
    session: AsyncSession, tenant_id: uuid.UUID, campaign_id: int
) -> tuple[Campaign, dict[str, Any]]:
    """The live campaign, locked FOR SHARE (a status change waits for this enrolment),
    and its current version's definition."""
    campaign = await journeys.get_campaign(session, tenant_id, campaign_id, share=True)
    if campaign is None:
        raise NotFound(f"no campaign {campaign_id}")
    if campaign.status != "live":
        raise CampaignStatusConflict(
            f"a {campaign.status} campaign enrols nobody; launch or resume it",
            details={"status": campaign.status},
        )
    version = await journeys.get_version(session, tenant_id, campaign_id, campaign.version)
    assert version is not None
    return campaign, version.definition


async def enrol_contacts(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    campaign_id: int,
    contact_ids: list[uuid.UUID],
    now: datetime,
) -> dict[str, Any]:
    """Ops enrol a list: merged contacts enter as their survivor, erased and unknown
    ones are reported, not enrolled."""
    campaign, definition = await _live(session, tenant_id, campaign_id)
    wanted = list(dict.fromkeys(contact_ids))
    statuses = await users.contact_statuses(session, tenant_id, wanted)
    survivors = {
        c: uuid.UUID(s.split(":", 1)[1]) for c, s in statuses.items() if s.startswith("merged:")
    }
    # A survivor may itself have been merged or erased since.
    followed = await users.contact_statuses(session, tenant_id, sorted(set(survivors.values())))
    live: list[uuid.UUID] = []
    skipped: list[dict[str, Any]] = []
    for contact_id in wanted:
        status = statuses[contact_id]
        if status == "active":
            live.append(contact_id)
        elif contact_id in survivors and followed.get(survivors[contact_id]) == "active":
            live.append(survivors[contact_id])
        else:
            reason = "erased" if status == "erased" or contact_id in survivors else "missing"
            skipped.append({"contact_id": contact_id, "reason": reason})
    live = list(dict.fromkeys(live))
    source = repository.listed(live, _manual())
    enrolled = await enrol(session, campaign, definition, source, now)
    return {"enrolled": enrolled, "reentry_refused": len(live) - enrolled, "skipped": skipped}


async def enrol_segment(
    session: AsyncSession, tenant_id: uuid.UUID, campaign_id: int, segment_id: int, now: datetime
) -> dict[str, Any]:
    """Ops enrol a segment's members as they are now, in one statement."""
    campaign, definition = await _live(session, tenant_id, campaign_id)
    if not await tagging.existing_segment_ids(session, tenant_id, [segment_id]):
        raise JourneyError("segment_id", f"no segment {segment_id}")
    source = repository.of_occurrence(tagging.segment_members(tenant_id, segment_id), _manual())
    enrolled = await enrol(session, campaign, definition, source, now)
    return {"enrolled": enrolled, "reentry_refused": None, "skipped": []}


def _manual() -> str:
    # A manual launch is an occurrence of its own.
    return f"manual:{uuid.uuid4()}"


async def enrol(
    session: AsyncSession,
    campaign: Campaign,
    definition: dict[str, Any],
    source: Any,
    now: datetime,
) -> int:
    """Enrol a source of (contact_id, occurrence) rows in the campaign's current version."""
    enrolled = await repository.enrol(
        session,
        tenant_id=campaign.tenant_id,
        campaign_id=campaign.id,
        version=campaign.version,
        entry_step=definition["steps"][0]["id"],
        reentry=definition["reentry"],
        source=source,
        now=now,
        listens=goal_events(definition),
    )
    if enrolled:
        await notify(session)
    return enrolled


def goal_events(definition: dict[str, Any]) -> list[str]:
    """The event types an enrolment listens for from its entry: the journey's goals."""
    return sorted({goal["event"] for goal in definition.get("goals", [])})
