"""The tagging service's router: each part's routes under /v1, tagged with the service.

The routes themselves live in each part's api.py (tags, rules, wecom, profile,
segments).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request

from services.tagging import SERVICE, service
from services.tagging.profile.api import router as profile_router
from services.tagging.rules.api import router as rules_router
from services.tagging.schemas import TaggingStatus
from services.tagging.segments.api import router as segments_router
from services.tagging.tags.api import router as tags_router
from services.tagging.wecom.api import router as wecom_router
from shared.auth import Principal, require
from shared.deps import SessionDep

router = APIRouter(prefix="/v1", tags=[SERVICE])
router.include_router(tags_router)
router.include_router(rules_router)
router.include_router(wecom_router)
router.include_router(profile_router)
router.include_router(segments_router)

Reader = Annotated[Principal, require("admin", "operator", "analyst")]


@router.get("/tagging/status", response_model=TaggingStatus)
async def status(principal: Reader, session: SessionDep, request: Request) -> TaggingStatus:
    """The event types this service consumes and the caller's tenant backlog in it."""
    return await service.status(session, request.app.state.runtime, principal.tenant)
