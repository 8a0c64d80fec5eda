"""HTTP routes of the enrolment part (in/out only: rules live in service.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request

from services.campaigns import clock
from services.campaigns.enrolment import service
from services.campaigns.enrolment.schemas import EnrolIn, EnrolOut
from shared.apikeys import Principal
from shared.audit import audit_note
from shared.auth import require
from shared.deps import SessionDep
from shared.params import DbId

router = APIRouter()

Operator = Annotated[Principal, require("admin", "operator")]


@router.post(
    "/campaigns/{campaign_id}/enrol",
    response_model=EnrolOut,
    openapi_extra={"x-scrm-errors": [400, 401, 403, 404, 409, 413, 422]},
)
async def enrol(
    campaign_id: DbId, body: EnrolIn, principal: Operator, session: SessionDep, request: Request
) -> EnrolOut:
    """A manual launch of a live journey: a segment's members as they are now (one
    statement, however many) or up to 10,000 listed contacts enter its current version
    at the entry step, each once, under its re-entry policy. 409 `campaign_status` when
    it is not live; 422 `invalid_journey` for a segment the tenant does not have."""
    now = clock.now()
    if body.segment_id is not None:
        found = await service.enrol_segment(
            session, principal.tenant, campaign_id, body.segment_id, now
        )
    else:
        assert body.contact_ids is not None
        found = await service.enrol_contacts(
            session, principal.tenant, campaign_id, body.contact_ids, now
        )
    audit_note(request, enrolled=found["enrolled"])
    return EnrolOut.model_validate(found)
