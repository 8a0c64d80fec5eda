"""HTTP routes of the tenant's points rules (in/out only: rules live in service.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter

from services.points.rules.schemas import PointsRules
from services.points.rules.service import load_rules, save_rules
from shared.auth import Principal, require
from shared.deps import SessionDep

# Included by services.points.api, whose router adds the /v1 prefix and the tag.
router = APIRouter()

Reader = Annotated[Principal, require("admin", "operator", "analyst", "staff")]
Admin = Annotated[Principal, require("admin")]


@router.get("/points/config", response_model=PointsRules)
async def get_config(principal: Reader, session: SessionDep) -> PointsRules:
    """The tenant's earning rules, promotions, multipliers and expiry settings."""
    return (await load_rules(session, principal.tenant)).rules


@router.put("/points/config", response_model=PointsRules)
async def put_config(body: PointsRules, principal: Admin, session: SessionDep) -> PointsRules:
    """Replace the tenant's points rules (omitted fields take their defaults)."""
    await save_rules(session, principal.tenant, body)
    return body
