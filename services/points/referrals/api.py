"""HTTP routes of the referrals part (in/out only: rules live beside them)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter
from pydantic import BaseModel, Field

from services.points.referrals import codes
from shared.auth import Principal, require
from shared.deps import SessionDep
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
