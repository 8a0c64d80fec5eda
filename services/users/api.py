"""HTTP routes of the users service (in/out only: rules live in service.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request

from services.users import SERVICE, service
from services.users.schemas import UsersStatus
from shared.auth import Principal, require
from shared.db import SessionDep

router = APIRouter(prefix="/v1", tags=[SERVICE])

Reader = Annotated[Principal, require("admin", "operator", "analyst")]


@router.get("/users/status", response_model=UsersStatus)
async def status(principal: Reader, session: SessionDep, request: Request) -> UsersStatus:
    """The event types this service consumes and the caller's tenant backlog in it."""
    return await service.status(session, request.app.state.runtime, principal.tenant)
