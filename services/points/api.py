"""HTTP routes of the points service (in/out only: rules live in service.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request

from services.points import SERVICE, service
from services.points.schemas import PointsStatus
from shared.auth import Principal, require
from shared.db import SessionDep

router = APIRouter(prefix="/v1", tags=[SERVICE])

Reader = Annotated[Principal, require("admin", "operator", "analyst")]


@router.get("/points/status", response_model=PointsStatus)
async def status(principal: Reader, session: SessionDep, request: Request) -> PointsStatus:
    """The event types this service consumes and the caller's tenant backlog in it."""
    return await service.status(session, request.app.state.runtime, principal.tenant)
