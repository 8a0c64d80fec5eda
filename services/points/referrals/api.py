"""HTTP routes of the referrals part (in/out only: rules live beside them)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from services.points.ledger.booking import now as clock_now
from services.points.referrals import attribution, codes, config, fraud, inviters, lifecycle
from services.points.referrals.config import ReferralConfig
from services.points.referrals.models import Referral
from shared.auth import Principal, require
from shared.deps import SessionDep
from shared.errors import NotFound
from shared.params import Cursor, DbId
from shared.scope import contact_in_scope

# Included by services.points.api, whose router adds the /v1 prefix and the tag.
router = APIRouter()

_sharer = require("admin", "operator", "staff")
Sharer = Annotated[Principal, _sharer]
SharingContact = Annotated[uuid.UUID, contact_in_scope(_sharer)]


class InviteCodeOut(BaseModel):
    contact_id: uuid.UUID = Field(description="Whose code: the survivor's for a merged contact.")
    code: str = Field(pattern=codes.CODE_PATTERN, description="Stable once made; unguessable.")
    link: str = Field(description="The share link (SCRM_POINTS_REFERRAL_LINK_BASE + code).")
    created_at: datetime
    qr_code: str | None = Field(
        description="The WeCom channel code (联系我 QR code image URL) whose State names the "
        "inviter, for tenants with a WeCom app: made by a job just after the code, None "
        "until then (and for tenants without WeCom)."
    )


@router.get(
    "/points/referrals/codes/{contact_id}",
    response_model=InviteCodeOut,
    openapi_extra={"x-scrm-errors": [401, 403, 404]},
)
async def invite_code(
    contact_id: SharingContact, principal: Sharer, session: SessionDep
) -> InviteCodeOut:
    """The contact's invite code and share link, made on the first request and the same
    afterwards (a merged contact answers with its survivor's). 404 for an erased or
    unknown contact."""
    found = await codes.code_for(session, principal.tenant, contact_id)
    return InviteCodeOut.model_validate(found)


# -- attribution through the API ------------------------------------------------------------

_operator = require("admin", "operator")
Operator = Annotated[Principal, _operator]
Admin = Annotated[Principal, require("admin")]
Reader = Annotated[Principal, require("admin", "operator", "analyst")]
ReadableContact = Annotated[
    uuid.UUID, contact_in_scope(require("admin", "operator", "analyst", "staff"))
]


class AttributionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    invitee_id: uuid.UUID = Field(description="The contact who came through the invite.")
    code: Annotated[str, Field(min_length=1, max_length=16)] = Field(
        description="The inviter's invite code."
    )


class AttributionOut(BaseModel):
    status: Literal["pending", "refused"] = Field(
        description="pending: attributed (the first valid attribution); refused: see reason."
    )
    reason: str | None = Field(
        description="Why it was refused: unknown_code, unknown_invitee, self_invite, cycle, "
        "already_known, already_attributed, duplicate_device, duplicate_ip, daily_cap."
    )
    referral_id: int | None
    inviter_id: uuid.UUID | None


@router.post(
    "/points/referrals/attributions",
    status_code=201,
    response_model=AttributionOut,
    openapi_extra={"x-scrm-errors": [400, 401, 403, 413, 422]},
)
async def attribute(
    body: AttributionIn, principal: Operator, session: SessionDep
) -> AttributionOut:
    """Attribute a contact (created through the API, an import or an event) to the
    inviter whose code it came with. A refusal is recorded with its reason and answered
    with 201 too: the attempt is on record either way."""
    found = await attribution.attribute(
        session,
        principal.tenant,
        body.invitee_id,
        body.code.strip().upper(),
        source="api",
        event_key=f"api:{uuid.uuid4()}",
        at=clock_now(),
        actor=principal.actor,
    )
    return AttributionOut(
        status="refused" if found.status != "pending" else "pending",
        reason=found.reason,
        referral_id=found.referral_id,
        inviter_id=found.inviter_id,
    )


# -- configuration --------------------------------------------------------------------------


@router.get("/points/referrals/config", response_model=ReferralConfig)
async def get_config(principal: Reader, session: SessionDep) -> ReferralConfig:
    """The tenant's referral settings: hold, anti-fraud thresholds, tiers, rewards."""
    return await config.load_config(session, principal.tenant)


@router.put(
    "/points/referrals/config",
    response_model=ReferralConfig,
    openapi_extra={"x-scrm-errors": [400, 401, 403, 413, 422]},
)
async def put_config(body: ReferralConfig, principal: Admin, session: SessionDep) -> ReferralConfig:
    """Replace the tenant's referral settings (omitted fields take their defaults). A
    new hold applies to referrals qualified from now on."""
    return await config.save_config(session, principal.tenant, body)


# -- review queue ---------------------------------------------------------------------------


class ReviewOut(BaseModel):
    id: int
    inviter_id: uuid.UUID
    status: Literal["open", "approved", "rejected"]
    trigger: str = Field(description="velocity: too many invites within a minute.")
    details: dict[str, Any]
    opened_at: datetime
    decided_at: datetime | None
    decided_by: str | None
    decision_reason: str | None


class ReviewPage(BaseModel):
    items: list[ReviewOut]
    next_cursor: str | None


class DecisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Annotated[str | None, Field(max_length=500)] = None


class RejectionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Annotated[str, Field(min_length=1, max_length=500)]


class DecisionOut(ReviewOut):
    revoked: int = Field(description="Referrals revoked by a rejection.")


@router.get(
    "/points/referrals/reviews",
    response_model=ReviewPage,
    openapi_extra={"x-scrm-errors": [401, 403, 422]},
)
async def list_reviews(
    principal: Operator,
    session: SessionDep,
    status: Literal["open", "approved", "rejected"] | None = None,
    cursor: Cursor = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> ReviewPage:
    """Inviters under manual review (and past decisions), newest first."""
    items, after = await fraud.list_reviews(
        session, principal.tenant, status=status, after_id=cursor, limit=limit
    )
    return ReviewPage(
        items=[ReviewOut.model_validate(i) for i in items],
        next_cursor=str(after) if after is not None else None,
    )


_DECISION_ERRORS = {"x-scrm-errors": [400, 401, 403, 404, 409, 413, 422]}


@router.post(
    "/points/referrals/reviews/{review_id}/approve",
    response_model=DecisionOut,
    openapi_extra=_DECISION_ERRORS,
)
async def approve_review(
    review_id: DbId, body: DecisionIn, principal: Operator, session: SessionDep
) -> DecisionOut:
    """Approve: the inviter's rewards proceed (those whose hold ended are paid by the
    next run of the hold job). 409 `review_decided` when decided already."""
    found = await fraud.decide(
        session,
        principal.tenant,
        review_id,
        approve=True,
        reason=body.reason,
        actor=principal.actor,
        at=clock_now(),
    )
    return DecisionOut.model_validate(found)


@router.post(
    "/points/referrals/reviews/{review_id}/reject",
    response_model=DecisionOut,
    openapi_extra=_DECISION_ERRORS,
)
async def reject_review(
    review_id: DbId, body: RejectionIn, principal: Operator, session: SessionDep
) -> DecisionOut:
    """Reject: the inviter's pending and qualified referrals are revoked (`fraud`, with
    the reason) and what they paid is clawed back. 409 `review_decided` when decided."""
    found = await fraud.decide(
        session,
        principal.tenant,
        review_id,
        approve=False,
        reason=body.reason,
        actor=principal.actor,
        at=clock_now(),
    )
    return DecisionOut.model_validate(found)


class RevocationOut(BaseModel):
    referral_id: int
    revoked: bool = Field(description="False when it was revoked or refused already.")


@router.post(
    "/points/referrals/{referral_id}/revoke",
    response_model=RevocationOut,
    openapi_extra=_DECISION_ERRORS,
)
async def revoke_referral(
    referral_id: DbId, body: RejectionIn, principal: Operator, session: SessionDep
) -> RevocationOut:
    """Revoke one referral found fraudulent, whatever its status (a rewarded one too):
    its rewards are clawed back through the ledger (debt rules apply)."""
    exists = await session.scalar(
        select(Referral.id).where(
            Referral.tenant_id == principal.tenant, Referral.id == referral_id
        )
    )
    if exists is None:
        raise NotFound(f"no referral {referral_id}", code="referral_not_found")
    done = await lifecycle.revoke(
        session,
        principal.tenant,
        [referral_id],
        cause="fraud",
        actor=principal.actor,
        at=clock_now(),
        within_hold=False,
        details={"reason": body.reason},
    )
    return RevocationOut(referral_id=referral_id, revoked=bool(done))


# -- per inviter ----------------------------------------------------------------------------


class InviterCounts(BaseModel):
    attributed: int = Field(description="Referrals not refused (any later status).")
    pending: int
    qualified: int
    succeeded: int = Field(description="Rewarded: the hold ended without a revocation.")
    revoked: int
    refused: int


class InviterReferral(BaseModel):
    referral_id: int
    invitee_id: uuid.UUID
    status: Literal["pending", "qualified", "rewarded", "revoked", "refused"]
    reason: str | None = Field(description="A refusal's or a revocation's reason.")
    level: Literal[1, 2] = Field(description="2: an invitee of someone this contact invited.")
    source: str
    attributed_at: datetime
    qualified_at: datetime | None
    hold_until: datetime | None
    rewarded_at: datetime | None
    revoked_at: datetime | None


class InviterOut(BaseModel):
    contact_id: uuid.UUID
    code: str | None = Field(description="The contact's invite code; null until one is made.")
    counts: InviterCounts
    under_review: bool
    referrals: list[InviterReferral] = Field(description="Newest first, a page of them.")
    next_cursor: str | None


@router.get(
    "/points/referrals/inviters/{contact_id}",
    response_model=InviterOut,
    openapi_extra={"x-scrm-errors": [401, 403, 404, 422]},
)
async def inviter(
    contact_id: ReadableContact,
    principal: Annotated[Principal, require("admin", "operator", "analyst", "staff")],
    session: SessionDep,
    cursor: Cursor = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> InviterOut:
    """An inviter's referrals: counts by status, review state, and the referrals (level
    1 and 2). A merged contact answers with its survivor's; 404 erased or unknown."""
    found = await inviters.inviter_view(
        session, principal.tenant, contact_id, after_id=cursor, limit=limit
    )
    return InviterOut.model_validate(found)
