"""HTTP routes of the governor: the tenant's campaign settings (in/out only)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request
from sqlalchemy.dialects.postgresql import insert

from services.campaigns import clock
from services.campaigns.governor.planner import settings_of
from services.campaigns.governor.settings import GovernorSettings
from services.campaigns.sends.models import CampaignSettingsRow
from shared.apikeys import Principal
from shared.audit import audit_note
from shared.auth import require
from shared.deps import SessionDep
from shared.errors import InvalidInput

router = APIRouter()

Reader = Annotated[Principal, require("admin", "operator", "analyst")]
Admin = Annotated[Principal, require("admin", "operator")]


def _shown(settings: GovernorSettings) -> dict[str, Any]:
    shown = settings.model_dump(mode="json")
    if settings.webhook_secret:
        shown["webhook_secret"] = "****" + settings.webhook_secret[-4:]
    if settings.sms_provider is not None:
        shown["sms_provider"]["secret"] = "****" + settings.sms_provider.secret[-4:]
    return shown


@router.get("/campaigns/settings", response_model=GovernorSettings)
async def get_settings(principal: Reader, session: SessionDep) -> dict[str, Any]:
    """The tenant's send rules: quiet hours, WeCom quotas, frequency caps, the
    sensitive-word filter (defaults until set; the webhook secret masked)."""
    return _shown(await settings_of(session, principal.tenant))


@router.put(
    "/campaigns/settings",
    response_model=GovernorSettings,
    openapi_extra={"x-scrm-errors": [400, 401, 403, 413, 422]},
)
async def put_settings(
    body: GovernorSettings, principal: Admin, session: SessionDep, request: Request
) -> dict[str, Any]:
    """Replace the tenant's send rules (fields left out take their defaults; a masked
    `webhook_secret` sent back keeps the stored one). 422 names a bad field. They hold
    from the next send planned on."""
    stored = await settings_of(session, principal.tenant)
    if body.webhook_secret and body.webhook_secret.startswith("****"):
        body = body.model_copy(update={"webhook_secret": stored.webhook_secret})
    if body.sms_provider is not None and body.sms_provider.secret.startswith("****"):
        if stored.sms_provider is None:
            raise InvalidInput(
                "sms_provider.secret: send the secret itself (none is stored)",
                details={"field": "sms_provider.secret"},
            )
        kept = body.sms_provider.model_copy(update={"secret": stored.sms_provider.secret})
        body = body.model_copy(update={"sms_provider": kept})
    raw = body.model_dump(mode="json")
    statement = insert(CampaignSettingsRow).values(
        tenant_id=principal.tenant, settings=raw, updated_at=clock.now()
    )
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=["tenant_id"],
            set_={"settings": statement.excluded.settings, "updated_at": clock.now()},
        )
    )
    audit_note(request, fields=sorted(body.model_fields_set))
    return _shown(body)
