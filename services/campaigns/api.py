"""HTTP routes of the campaigns service (in/out only: rules live in service.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request

from services.campaigns import SERVICE, service
from services.campaigns.enrolment.api import router as enrolment_router
from services.campaigns.governor.api import router as governor_router
from services.campaigns.journeys.api import router as journeys_router
from services.campaigns.schemas import CampaignsStatus
from services.campaigns.sends.api import router as sends_router
from services.campaigns.sends.review_api import router as review_router
from shared.auth import Principal, require
from shared.deps import SessionDep

router = APIRouter(prefix="/v1", tags=[SERVICE])

Reader = Annotated[Principal, require("admin", "operator", "analyst")]


@router.get("/campaigns/status", response_model=CampaignsStatus)
async def status(principal: Reader, session: SessionDep, request: Request) -> CampaignsStatus:
    """The event types this service consumes and the caller's tenant backlog in it."""
    return await service.status(session, request.app.state.runtime, principal.tenant)


# After /campaigns/status and /campaigns/settings, which /campaigns/{campaign_id} would
# otherwise take.
router.include_router(governor_router)
router.include_router(review_router)
router.include_router(journeys_router)
router.include_router(enrolment_router)
router.include_router(sends_router)
