"""HTTP routes of the journeys part (in/out only: rules live in service.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response

from services.campaigns import clock
from services.campaigns.journeys import service
from services.campaigns.journeys.models import Campaign
from services.campaigns.journeys.schemas import (
    CampaignCreated,
    CampaignIn,
    CampaignOut,
    CampaignPage,
    CampaignStatusOut,
    CampaignSummary,
    MigrateIn,
    MigrateOut,
    Status,
    VersionOut,
)
from services.campaigns.runner.wake import notify
from shared.apikeys import Principal
from shared.audit import audit_note
from shared.auth import require
from shared.deps import SessionDep
from shared.params import Cursor, DbId

router = APIRouter()

Reader = Annotated[Principal, require("admin", "operator", "analyst")]
Operator = Annotated[Principal, require("admin", "operator")]
Version = Annotated[int, Path(ge=1, le=2**31 - 1)]


@router.post(
    "/campaigns",
    status_code=201,
    response_model=CampaignCreated,
    openapi_extra={"x-scrm-errors": [400, 401, 403, 409, 413, 422]},
)
async def create_campaign(
    body: CampaignIn, principal: Operator, session: SessionDep, request: Request
) -> CampaignCreated:
    """A journey, saved as a draft (version 1) once it checks out: 422 `invalid_journey`
    names the failing path (`details.path`, e.g. `steps[2].next`); 409
    `campaign_name_taken`."""
    campaign = await service.create(session, principal.tenant, body.name, body.definition())
    audit_note(request, campaign_id=campaign.id)
    return CampaignCreated(id=campaign.id, version=campaign.version, status="draft")


@router.get("/campaigns", response_model=CampaignPage)
async def list_campaigns(
    principal: Reader,
    session: SessionDep,
    cursor: Cursor = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    status: Status | None = None,
) -> CampaignPage:
    """The tenant's campaigns by id (optionally of one `status`); pass `next_cursor`
    back as `cursor`."""
    items = await service.list_campaigns(session, principal.tenant, cursor, limit, status)
    return CampaignPage(
        items=[CampaignSummary.model_validate(i) for i in items],
        next_cursor=str(items[-1]["id"]) if len(items) == limit else None,
    )


@router.get("/campaigns/{campaign_id}", response_model=CampaignOut)
async def get_campaign(campaign_id: DbId, principal: Reader, session: SessionDep) -> CampaignOut:
    """The campaign, its status and its current version's definition (as checked and
    stored, defaults filled in), with the list of its versions."""
    return CampaignOut.model_validate(await service.view(session, principal.tenant, campaign_id))


@router.get("/campaigns/{campaign_id}/versions/{version}", response_model=VersionOut)
async def get_version(
    campaign_id: DbId, version: Version, principal: Reader, session: SessionDep
) -> VersionOut:
    """One version's definition (contacts enrolled on it finish it)."""
    found = await service.version_view(session, principal.tenant, campaign_id, version)
    return VersionOut.model_validate(found)


@router.put(
    "/campaigns/{campaign_id}",
    response_model=CampaignOut,
    openapi_extra={"x-scrm-errors": [400, 401, 403, 404, 409, 413, 422]},
)
async def replace_campaign(
    campaign_id: DbId, body: CampaignIn, principal: Operator, session: SessionDep
) -> CampaignOut:
    """Save a new definition. A draft is edited in place; a live or paused journey gets
    the next `version` (contacts already enrolled finish the version they started).
    409 `campaign_status` for a stopped one, `campaign_name_taken`; 422 `invalid_journey`."""
    await service.replace(
        session, principal.tenant, campaign_id, body.name, body.definition(), clock.now()
    )
    return CampaignOut.model_validate(await service.view(session, principal.tenant, campaign_id))


@router.delete("/campaigns/{campaign_id}", status_code=204)
async def delete_campaign(campaign_id: DbId, principal: Operator, session: SessionDep) -> Response:
    """Delete a draft. 409 `campaign_status` for a journey that ran (stop it instead)."""
    await service.delete(session, principal.tenant, campaign_id)
    return Response(status_code=204)


@router.post(
    "/campaigns/{campaign_id}/migrate",
    response_model=MigrateOut,
    openapi_extra={"x-scrm-errors": [400, 401, 403, 404, 409, 413, 422]},
)
async def migrate_campaign(
    campaign_id: DbId, body: MigrateIn, principal: Operator, session: SessionDep, request: Request
) -> MigrateOut:
    """Ops move the contacts still on earlier versions (or on `from_version`) to the
    current version, each to the step of the same id or the one `steps` maps it to; a
    contact waiting at a step that is a wait again keeps its time. 422 `invalid_journey`
    names a step the current version lacks (nobody moves); 409 `campaign_status` for a
    draft or stopped journey."""
    found = await service.migrate(
        session, principal.tenant, campaign_id, body.from_version, body.steps, clock.now()
    )
    audit_note(request, migrated=found["migrated"])
    await notify(session)
    return MigrateOut.model_validate(found)


def _status(campaign: Campaign) -> CampaignStatusOut:
    return CampaignStatusOut(
        id=campaign.id,
        status=campaign.status,
        version=campaign.version,
        launched_at=campaign.launched_at,
        paused_at=campaign.paused_at,
        stopped_at=campaign.stopped_at,
    )


async def _transition(
    action: str, campaign_id: int, principal: Principal, session: SessionDep, request: Request
) -> CampaignStatusOut:
    campaign = await service.transition(session, principal.tenant, campaign_id, action, clock.now())
    audit_note(request, status=campaign.status)
    return _status(campaign)


_TRANSITIONS = {
    "launch": "A draft goes live (`live` again changes nothing). 409 `campaign_status` "
    "otherwise (a paused journey is resumed).",
    "pause": "A live journey pauses: no new enrolments, no sends; waits keep their time.",
    "resume": "A paused journey goes live again.",
    "stop": "A live or paused journey ends for good: every enrolled contact leaves it.",
}


def _transition_route(action: str, summary: str) -> None:
    async def route(
        campaign_id: DbId, principal: Operator, session: SessionDep, request: Request
    ) -> CampaignStatusOut:
        return await _transition(action, campaign_id, principal, session, request)

    route.__doc__ = summary
    router.post(
        f"/campaigns/{{campaign_id}}/{action}",
        response_model=CampaignStatusOut,
        name=f"{action}_campaign",
        openapi_extra={"x-scrm-errors": [400, 401, 403, 404, 409]},
    )(route)


for _action, _summary in _TRANSITIONS.items():
    _transition_route(_action, _summary)
