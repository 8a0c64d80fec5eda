"""HTTP routes of member benefits (in/out only: rules live in service.py)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from services.points.benefits import service as benefits
from services.points.benefits.schemas import BenefitIn, BenefitOut
from services.points.ledger.booking import now
from services.points.rules.service import load_rules
from shared.auth import Principal, require
from shared.deps import SessionDep
from shared.errors import InvalidInput
from shared.idempotency import IdempotencyDep
from shared.params import Month
from shared.scope import contact_in_scope

# Included by services.points.api, whose router adds the /v1 prefix and the tag.
router = APIRouter()

Reader = Annotated[Principal, require("admin", "operator", "analyst", "staff")]
_claimer = require("admin", "operator", "staff")
Claimer = Annotated[Principal, _claimer]
# The path's contact id, once it is in the caller's scope (404 otherwise: see shared.scope).
ClaimingMember = Annotated[uuid.UUID, contact_in_scope(_claimer)]
Admin = Annotated[Principal, require("admin")]


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
    contact_id: ClaimingMember,
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
    month: Month = None,
) -> dict[str, Any]:
    """Monthly usage per benefit; `underused` flags fewer than 15% of eligible members."""
    rules = await load_rules(session, principal.tenant)
    first = month or rules.local_day(now()).replace(day=1)
    return {
        "month": first.strftime("%Y-%m"),
        "benefits": await benefits.monthly_report(session, principal.tenant, first, rules),
    }
