"""HTTP routes of the tagging service (in/out only: rules live in service.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request

from services.tagging import SERVICE, service
from services.tagging.schemas import TaggingStatus
from shared.auth import Principal, require
from shared.deps import SessionDep

router = APIRouter(prefix="/v1", tags=[SERVICE])

Reader = Annotated[Principal, require("admin", "operator", "analyst")]


@router.get("/tagging/status", response_model=TaggingStatus)
async def status(principal: Reader, session: SessionDep, request: Request) -> TaggingStatus:
    """The event types this service consumes and the caller's tenant backlog in it."""
    return await service.status(session, request.app.state.runtime, principal.tenant)
