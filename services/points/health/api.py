"""HTTP routes of the points economy's health (in/out only: rules live in service.py)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from services.points.health import service as health
from services.points.ledger.booking import now
from shared.auth import Principal, require
from shared.deps import SessionDep

# Included by services.points.api, whose router adds the /v1 prefix and the tag.
router = APIRouter()

Reader = Annotated[Principal, require("admin", "operator", "analyst", "staff")]


@router.get("/points/health")
async def points_health(
    principal: Reader,
    session: SessionDep,
    weeks: Annotated[int, Query(ge=1, le=104)] = 8,
) -> dict[str, Any]:
    """Weekly earned/spent (tenant-local weeks) and the annual inflation of outstanding points."""
    return await health.report(session, principal.tenant, now(), weeks)


@router.get("/points/health/alerts")
async def health_alerts(principal: Reader, session: SessionDep) -> list[dict[str, Any]]:
    """Inflation alerts recorded, with their delivery to the alert webhook."""
    return await health.list_alerts(session, principal.tenant)
