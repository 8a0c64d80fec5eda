"""HTTP routes of benefits and points health (in/out only: rules in benefits.py, health.py)."""

from __future__ import annotations

import uuid
from datetime import date
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from services.points import benefits, expiry, health
from services.points.ledger import now
from services.points.rules import load_rules
from shared.auth import Principal, require
from shared.db import SessionDep
from shared.errors import InvalidInput
from shared.idempotency import IdempotencyDep

# Included by services.points.api, whose router adds the /v1 prefix.
router = APIRouter(tags=["points"])

Reader = Annotated[Principal, require("admin", "operator", "analyst", "staff")]
Claimer = Annotated[Principal, require("admin", "operator", "staff")]
Admin = Annotated[Principal, require("admin")]
Period = Literal["week", "month", "quarter", "year"]


class BenefitIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9_-]+$")]
    name: Annotated[str, Field(min_length=1, max_length=200)]
    tiers: list[Annotated[str, Field(min_length=1, max_length=32)]] = []
    member_quota: Annotated[int | None, Field(ge=1, le=1_000_000)] = None
    member_period: Period = "month"
    total_quota: Annotated[int | None, Field(ge=1, le=100_000_000)] = None
    total_period: Period = "week"
    active: bool = True


class BenefitOut(BenefitIn):
    model_config = ConfigDict(extra="ignore")

    id: uuid.UUID


@router.get("/points/benefits", response_model=list[BenefitOut])
async def list_benefits(principal: Reader, session: SessionDep) -> list[BenefitOut]:
    """The tenant's benefits (SPEC's free shipping and new-product trial to start with)."""
    return [
        BenefitOut.model_validate(b)
        for b in await benefits.list_benefits(session, principal.tenant)
    ]


@router.put("/points/benefits/{code}", response_model=BenefitOut)
async def put_benefit(
    code: str, body: BenefitIn, principal: Admin, session: SessionDep
) -> BenefitOut:
    """Create or replace a benefit (its code is the path's)."""
    if body.code != code:
        raise InvalidInput("the body's code must match the path", details={"code": body.code})
    rules = await load_rules(session, principal.tenant)
    unknown = set(body.tiers) - {t.name for t in rules.rules.tiers}
    if unknown:
        raise InvalidInput(f"unknown tier(s): {', '.join(sorted(unknown))}")
    row = await benefits.upsert_benefit(session, principal.tenant, body.model_dump())
    return BenefitOut.model_validate(row)


@router.post("/points/accounts/{contact_id}/benefits/{code}/claims", status_code=201)
async def claim_benefit(
    contact_id: uuid.UUID,
    code: str,
    principal: Claimer,
    idem: IdempotencyDep,
    session: SessionDep,
) -> JSONResponse:
    """Claim one unit: 201, or 409 `not_eligible` / `member_quota_reached` /
    `quota_exhausted` with nothing claimed."""
    claimed = await benefits.claim(
        session, principal.tenant, contact_id, code, actor=principal.actor, now=now()
    )
    return idem.respond(claimed, status_code=201)


@router.get("/points/benefits/report")
async def benefit_report(
    principal: Reader,
    session: SessionDep,
    month: Annotated[str | None, Query(pattern=r"^\d{4}-\d{2}$")] = None,
) -> dict[str, Any]:
    """Monthly usage per benefit; `underused` flags fewer than 15% of eligible members."""
    rules = await load_rules(session, principal.tenant)
    first = date.fromisoformat(f"{month}-01") if month else rules.local_day(now()).replace(day=1)
    return {
        "month": first.strftime("%Y-%m"),
        "benefits": await benefits.monthly_report(session, principal.tenant, first, rules),
    }


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


@router.get("/points/expiry-notices")
async def expiry_notices(
    principal: Reader,
    session: SessionDep,
    cursor: Annotated[int | None, Query(ge=1)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict[str, Any]:
    """'N points expire on D' notices (one per member and date), newest first, kept for
    the notification channels until campaigns deliver them."""
    items = await expiry.list_notices(session, principal.tenant, before=cursor, limit=limit)
    return {
        "items": items,
        "next_cursor": str(items[-1]["id"]) if len(items) == limit else None,
    }
