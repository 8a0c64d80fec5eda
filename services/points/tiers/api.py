"""HTTP routes of membership tiers (in/out only: rules live in service.py)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter

from services.points.tiers import service
from services.points.tiers.schemas import TierStatus
from shared.auth import Principal, require
from shared.deps import SessionDep
from shared.scope import contact_in_scope

# Included by services.points.api, whose router adds the /v1 prefix and the tag.
router = APIRouter()

_reader = require("admin", "operator", "analyst", "staff")
Reader = Annotated[Principal, _reader]
# The path's contact id, once it is in the caller's scope (404 otherwise: see shared.scope).
ReadableMember = Annotated[uuid.UUID, contact_in_scope(_reader)]


@router.get("/points/accounts/{contact_id}/tier", response_model=TierStatus)
async def get_tier(
    contact_id: ReadableMember, principal: Reader, session: SessionDep
) -> TierStatus:
    """The member's tier, the next one and what is missing, and the retention status."""
    return TierStatus.model_validate(
        await service.tier_status(session, principal.tenant, contact_id)
    )
