"""HTTP routes of the tagging service's profile part (in/out only: rules live in
service.py): the tenant's lifecycle and score settings, and a contact's profile."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter

from services.tagging.profile import service
from services.tagging.profile.schemas import ContactProfile, ProfileSettings
from shared.auth import Principal, require
from shared.deps import SessionDep
from shared.scope import contact_in_scope

# Included by services.tagging.api, whose router adds the /v1 prefix and the tag.
router = APIRouter()

_reader = require("admin", "operator", "analyst", "staff")
Reader = Annotated[Principal, _reader]
SettingsReader = Annotated[Principal, require("admin", "operator", "analyst")]
Writer = Annotated[Principal, require("admin", "operator")]
# The path's contact id, once it is in the caller's scope (404 otherwise: see shared.scope).
ReadableContact = Annotated[uuid.UUID, contact_in_scope(_reader)]


@router.get("/tagging/profile/settings", response_model=ProfileSettings)
async def get_settings(principal: SettingsReader, session: SessionDep) -> ProfileSettings:
    """The tenant's lifecycle thresholds, RFM and health settings (defaults where unset)."""
    return await service.get_settings(session, principal.tenant)


@router.put("/tagging/profile/settings", response_model=ProfileSettings)
async def put_settings(
    body: ProfileSettings, principal: Writer, session: SessionDep
) -> ProfileSettings:
    """Replace the tenant's settings (omitted fields take their defaults). Stages and
    scores follow as contacts' facts change, and with the periodic jobs."""
    return await service.save_settings(session, principal.tenant, body)


@router.get("/contacts/{contact_id}/profile", response_model=ContactProfile)
async def get_profile(
    contact_id: ReadableContact, principal: Reader, session: SessionDep
) -> ContactProfile:
    """The contact's lifecycle stage, RFM scores, cell and value tier, health score,
    points tier, tags with their current weights and segments. 404 for an erased
    contact (`profile_erased`) or a merged one (`profile_merged`, the survivor's id in
    the error's details, `merged_into`); a contact no event of which has reached the
    service yet has an empty profile (potential, no scores)."""
    return await service.contact_profile(session, principal.tenant, contact_id)
