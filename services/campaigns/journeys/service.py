"""Rules of the journeys part: saving a checked journey, its versions and its status.

A draft is edited in place (its version stays 1). Saving a live or paused journey
creates the next version: contacts enrolled on an earlier version finish it, new
enrolments take the current one. A stopped journey is kept as it ended: its contacts
leave it (`stopped`). A paused one keeps them where they are; what falls due
meanwhile runs once it resumes.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from services import tagging
from services.campaigns.journeys import definition, repository
from services.campaigns.journeys.definition import Journey, JourneyError
from services.campaigns.journeys.models import Campaign
from shared.catalog import catalog
from shared.errors import Conflict, InvalidInput, NotFound

# action -> (the statuses it applies to, the status it leads to). Asking for the status
# a campaign already has changes nothing (a retried request gets the same answer).
TRANSITIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "launch": (("draft",), "live"),
    "pause": (("live",), "paused"),
    "resume": (("paused",), "live"),
    "stop": (("live", "paused"), "stopped"),
}
_STAMP = {"live": "launched_at", "paused": "paused_at", "stopped": "stopped_at"}


class CampaignNameTaken(Conflict):
    code = "campaign_name_taken"


class CampaignStatusConflict(Conflict):
    code = "campaign_status"


async def check(session: AsyncSession, tenant_id: uuid.UUID, raw: dict[str, Any]) -> Journey:
    """The journey once its shape is right and everything it names is the tenant's:
    tags, segments, event types and the segment rules of its conditions."""
    journey = definition.parse(raw)
    refs = journey.references
    tags = await tagging.existing_tag_ids(session, tenant_id, [t for _, t in refs.tags])
    for path, tag_id in refs.tags:
        if tag_id not in tags:
            raise JourneyError(path, f"no tag {tag_id}")
    segments = await tagging.existing_segment_ids(session, tenant_id, [s for _, s in refs.segments])
    for path, segment_id in refs.segments:
        if segment_id not in segments:
            raise JourneyError(path, f"no segment {segment_id}")
    events = catalog()
    for path, event_type in refs.event_types:
        if events.get("domain", event_type) is None:
            raise JourneyError(path, f"unknown event type {event_type!r} (see the event catalog)")
    for path, rule in refs.rules:
        try:
            await tagging.check_segment_rule(session, tenant_id, rule)
        except InvalidInput as exc:
            inner = (exc.details or {}).get("path", "rule")
            message = exc.message.split(": ", 1)[-1]
            raise JourneyError(path if inner == "rule" else f"{path}.{inner}", message) from exc
    return journey


async def create(
    session: AsyncSession, tenant_id: uuid.UUID, name: str, raw: dict[str, Any]
) -> Campaign:
    journey = await check(session, tenant_id, raw)
    campaign_id = await repository.insert_campaign(session, tenant_id, name, journey.trigger_type)
    if campaign_id is None:
        raise CampaignNameTaken(f"a campaign named {name!r} exists", details={"name": name})
    await repository.put_version(session, tenant_id, campaign_id, 1, journey.raw)
    return await get(session, tenant_id, campaign_id)


async def get(session: AsyncSession, tenant_id: uuid.UUID, campaign_id: int) -> Campaign:
    found = await repository.get_campaign(session, tenant_id, campaign_id)
    if found is None:
        raise NotFound(f"no campaign {campaign_id}")
    return found


async def view(session: AsyncSession, tenant_id: uuid.UUID, campaign_id: int) -> dict[str, Any]:
    """The campaign with its current version's definition and the list of versions."""
    campaign = await get(session, tenant_id, campaign_id)
    current = await repository.get_version(session, tenant_id, campaign_id, campaign.version)
    assert current is not None, "a campaign always has its current version"
    versions = await repository.list_versions(session, campaign_id)
    return {
        **summary(campaign),
        **current.definition,
        "versions": [{"version": v, "created_at": at} for v, at in versions],
        "created_at": campaign.created_at,
        "launched_at": campaign.launched_at,
        "paused_at": campaign.paused_at,
        "stopped_at": campaign.stopped_at,
    }


def summary(campaign: Campaign) -> dict[str, Any]:
    return {
        "id": campaign.id,
        "name": campaign.name,
        "status": campaign.status,
        "version": campaign.version,
        "trigger_type": campaign.trigger_type,
        "updated_at": campaign.updated_at,
    }


async def version_view(
    session: AsyncSession, tenant_id: uuid.UUID, campaign_id: int, version: int
) -> dict[str, Any]:
    await get(session, tenant_id, campaign_id)
    found = await repository.get_version(session, tenant_id, campaign_id, version)
    if found is None:
        raise NotFound(f"campaign {campaign_id} has no version {version}")
    return {"version": found.version, "created_at": found.created_at, **found.definition}


async def list_campaigns(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    after: int | None,
    limit: int,
    status: str | None,
) -> list[dict[str, Any]]:
    found = await repository.list_campaigns(session, tenant_id, after, limit, status)
    return [summary(c) for c in found]


async def replace(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    campaign_id: int,
    name: str,
    raw: dict[str, Any],
    now: datetime,
) -> Campaign:
    """Save a new definition: in place for a draft, as the next version otherwise."""
    campaign = await repository.get_campaign(session, tenant_id, campaign_id, lock=True)
    if campaign is None:
        raise NotFound(f"no campaign {campaign_id}")
    if campaign.status == "stopped":
        raise CampaignStatusConflict(
            "a stopped campaign is kept as it ended; create a new one",
            details={"status": campaign.status},
        )
    journey = await check(session, tenant_id, raw)
    if name != campaign.name and await repository.name_taken(session, tenant_id, name, campaign_id):
        raise CampaignNameTaken(f"a campaign named {name!r} exists", details={"name": name})
    version = campaign.version if campaign.status == "draft" else campaign.version + 1
    await repository.put_version(session, tenant_id, campaign_id, version, journey.raw)
    await repository.set_fields(
        session,
        campaign_id,
        name=name,
        version=version,
        trigger_type=journey.trigger_type,
        updated_at=now,
    )
    return await _fresh(session, tenant_id, campaign_id)


async def transition(
    session: AsyncSession, tenant_id: uuid.UUID, campaign_id: int, action: str, now: datetime
) -> Campaign:
    """Launch, pause, resume or stop (see TRANSITIONS)."""
    sources, target = TRANSITIONS[action]
    campaign = await repository.get_campaign(session, tenant_id, campaign_id, lock=True)
    if campaign is None:
        raise NotFound(f"no campaign {campaign_id}")
    if campaign.status == target:
        return campaign
    if campaign.status not in sources:
        raise CampaignStatusConflict(
            f"cannot {action} a {campaign.status} campaign",
            details={"status": campaign.status, "action": action},
        )
    stamps = {_STAMP[target]: now}
    if target == "live":
        # Triggers and listeners take events from now on: none of a pause.
        stamps["live_since"] = now
    await repository.set_fields(session, campaign_id, status=target, updated_at=now, **stamps)
    if target == "stopped":
        await repository.end_enrolments(session, campaign_id, "stopped", now)
    return await _fresh(session, tenant_id, campaign_id)


async def delete(session: AsyncSession, tenant_id: uuid.UUID, campaign_id: int) -> None:
    """Only a draft is deleted; a journey that ran is stopped instead (its history stays)."""
    campaign = await repository.get_campaign(session, tenant_id, campaign_id, lock=True)
    if campaign is None:
        raise NotFound(f"no campaign {campaign_id}")
    if campaign.status != "draft":
        raise CampaignStatusConflict(
            f"a {campaign.status} campaign is not deleted; stop it",
            details={"status": campaign.status},
        )
    await repository.delete_campaign(session, campaign_id)


async def _fresh(session: AsyncSession, tenant_id: uuid.UUID, campaign_id: int) -> Campaign:
    found = await repository.get_campaign(session, tenant_id, campaign_id, lock=True)
    assert found is not None
    return found


async def migrate(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    campaign_id: int,
    from_version: int | None,
    steps: dict[str, str],
    now: datetime,
) -> dict[str, Any]:
    """Move the contacts still in earlier versions to the current one, each to the step
    of the same id (or the one `steps` maps it to). A step the current version does not
    have is a 422 naming it, and nobody moves. A contact waiting at a step that is a
    wait again keeps its time; at any other step it runs that step now."""
    campaign = await repository.get_campaign(session, tenant_id, campaign_id, lock=True)
    if campaign is None:
        raise NotFound(f"no campaign {campaign_id}")
    if campaign.status in ("draft", "stopped"):
        raise CampaignStatusConflict(
            f"a {campaign.status} campaign has nobody to migrate",
            details={"status": campaign.status},
        )
    if from_version is not None and from_version >= campaign.version:
        raise InvalidInput(
            f"from_version must be earlier than the current version {campaign.version}",
            details={"field": "from_version"},
        )
    current = await repository.get_version(session, tenant_id, campaign_id, campaign.version)
    assert current is not None
    types = {s["id"]: s["type"] for s in current.definition["steps"]}
    for old, new in steps.items():
        if new not in types:
            raise JourneyError(f"steps.{old}", f"version {campaign.version} has no step {new!r}")
    at = await repository.steps_in_use(session, campaign_id, campaign.version, from_version)
    missing = sorted(s for s in at if steps.get(s, s) not in types)
    if missing:
        raise JourneyError(
            f"steps.{missing[0]}",
            f"contacts are at step {missing[0]!r}, which version {campaign.version} does not "
            "have: map it to one of its steps",
        )
    mapping = {s: steps.get(s, s) for s in at}
    waiting = {s for s, t in types.items() if t in definition.WAITING}
    goals = sorted({g["event"] for g in current.definition.get("goals", [])})
    moved = await repository.migrate_enrolments(
        session, campaign_id, campaign.version, from_version, mapping, waiting, goals, now
    )
    return {"migrated": sum(moved.values()), "version": campaign.version, "by_step": moved}
