"""HTTP routes of the users service (in/out only: rules live in service.py and ingest.py)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import PlainTextResponse, Response

from services.users import SERVICE, consent, erasure, repository, service
from services.users.import_api import import_router
from services.users.ingest_http import (
    IngestFastPath,
    IngestState,
    accept_events,
    accept_signed_events,
    accept_wecom_callback,
    ingest_state,
    verify_wecom_url,
)
from services.users.schemas import (
    MAX_BATCH,
    ConsentIn,
    ContactDetail,
    ContactPage,
    ContactPatch,
    GroupDetail,
    GroupMemberOut,
    GroupOut,
    GroupPage,
    IngestResult,
    StaffOut,
    TimelinePage,
    UsersStatus,
    WebhookSecretCreated,
    WebhookSecretOut,
    WeComSettingsIn,
    WeComSettingsOut,
)
from shared.auth import Principal, require
from shared.catalog import events_request_body
from shared.deps import SessionDep
from shared.errors import NotFound
from shared.params import Cursor
from shared.runtime import Runtime
from shared.scope import contact_in_scope

router = APIRouter(prefix="/v1", tags=[SERVICE])
# Served by shared.app ahead of routing (see ingest_http).
front_doors = [IngestFastPath]
# First, so /v1/contacts/import and /v1/contacts/export are not taken for contact ids.
router.include_router(import_router)

_contact_reader = require("admin", "operator", "analyst", "staff")
_contact_writer = require("admin", "operator", "staff")
_admin = require("admin")
Reader = Annotated[Principal, require("admin", "operator", "analyst")]
ContactReader = Annotated[Principal, _contact_reader]
ContactWriter = Annotated[Principal, _contact_writer]
Admin = Annotated[Principal, _admin]
Operator = Annotated[Principal, require("admin", "operator")]
# The path's contact id, once it is in the caller's scope (404 otherwise: see
# shared.scope), checked with the same role dependency as the route's principal.
ReadableContact = Annotated[uuid.UUID, contact_in_scope(_contact_reader)]
WritableContact = Annotated[uuid.UUID, contact_in_scope(_contact_writer)]
ErasableContact = Annotated[uuid.UUID, contact_in_scope(_admin)]


def _ingest(request: Request) -> IngestState:
    return ingest_state(request.app)


@router.get("/users/status", response_model=UsersStatus)
async def status(principal: Reader, session: SessionDep, request: Request) -> UsersStatus:
    """The event types this service consumes and the caller's tenant backlog in it."""
    return await service.status(session, request.app.state.runtime, principal.tenant)


# -- WeCom callbacks, signed webhooks and the event API ---------------------------------
# These routes document the contract; under load the same functions answer
# through IngestFastPath (services/users/ingest_http.py), which skips routing.
# They read their body themselves, so its schema is given here (openapi_extra).

_WECOM_QUERY = [
    {"name": "msg_signature", "in": "query", "description": "WeCom's SHA1 signature."},
    {
        "name": "timestamp",
        "in": "query",
        "description": "Unix seconds; refused further than SCRM_WECOM_MAX_SKEW_SECONDS from now.",
    },
    {"name": "nonce", "in": "query", "description": "WeCom's random string."},
]
_WECOM_RESPONSES: dict[str, dict[str, str]] = {
    "400": {"description": "`wecom_rejected`, `bad_timestamp`, `stale_timestamp`."},
    "401": {
        "description": "`invalid_signature`, also for an unknown tenant or one without "
        "WeCom settings."
    },
    "422": {"description": "`validation_error`: a query parameter is missing."},
    "503": {"description": "`unavailable`: could not store it; WeCom retries."},
}
_WEBHOOK_HEADERS = [
    {
        "name": "X-Scrm-Timestamp",
        "in": "header",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
        "description": "Unix seconds; refused further than SCRM_WEBHOOK_MAX_SKEW_SECONDS from now.",
    },
    {
        "name": "X-Scrm-Signature",
        "in": "header",
        "required": True,
        "schema": {"type": "string", "pattern": "^sha256=[0-9a-f]{64}$"},
        "description": '`sha256=` + hex HMAC-SHA256(secret, timestamp + "." + body), with one '
        "of the tenant's webhook secrets (two are active while rotating).",
    },
]
_EVENT_ERRORS = {
    "400": {
        "description": "`malformed_json`; for the webhook also `bad_timestamp`, `stale_timestamp`."
    },
    "422": {
        "description": "`batch_too_large`, or `validation_error` when no event is valid "
        "(details: each rejection with its index)."
    },
    "503": {"description": "`unavailable`: could not store them; retry."},
}


@router.get(
    "/wecom/{tenant_slug}/callback",
    response_class=PlainTextResponse,
    openapi_extra={
        "parameters": [
            *_WECOM_QUERY,
            {"name": "echostr", "in": "query", "description": "The encrypted echo string."},
        ],
        "x-scrm-errors": [400, 401, 422],
        "responses": {k: v for k, v in _WECOM_RESPONSES.items() if k != "503"},
    },
)
async def wecom_verify_url(
    tenant_slug: str,
    request: Request,
    msg_signature: str,
    timestamp: str,
    nonce: str,
    echostr: str,
) -> PlainTextResponse:
    """WeCom's URL verification: answer the decrypted echostr. An unknown tenant, or one
    without WeCom settings, is answered as a bad signature is (401 `invalid_signature`)."""
    query = {"msg_signature": msg_signature, "timestamp": timestamp, "nonce": nonce}
    plain = await verify_wecom_url(_ingest(request), tenant_slug, {**query, "echostr": echostr})
    return PlainTextResponse(plain)


@router.post(
    "/wecom/{tenant_slug}/callback",
    response_class=PlainTextResponse,
    openapi_extra={
        "parameters": _WECOM_QUERY,
        "requestBody": {
            "required": True,
            "description": "WeCom's encrypted callback (the event is in `Encrypt`).",
            "content": {
                "text/xml": {
                    "schema": {"type": "string"},
                    "example": "<xml><ToUserName><![CDATA[ww0f3a5c7e9b1d2f4a]]></ToUserName>"
                    "<Encrypt><![CDATA[...]]></Encrypt><AgentID><![CDATA[]]></AgentID></xml>",
                }
            },
        },
        "x-scrm-errors": [400, 401, 413, 422, 503],
        "responses": _WECOM_RESPONSES,
    },
)
async def wecom_callback(
    tenant_slug: str, request: Request, msg_signature: str, timestamp: str, nonce: str
) -> PlainTextResponse:
    """Verify, decrypt, store with a dedupe key, answer `success`; workers do the rest.
    An unknown tenant, or one without WeCom settings, is answered as a bad signature is
    (401 `invalid_signature`)."""
    query = {"msg_signature": msg_signature, "timestamp": timestamp, "nonce": nonce}
    answer = await accept_wecom_callback(_ingest(request), tenant_slug, query, await request.body())
    return PlainTextResponse(answer)


@router.post(
    "/webhooks/{tenant_slug}/events",
    status_code=202,
    response_model=IngestResult,
    openapi_extra={
        "parameters": _WEBHOOK_HEADERS,
        "requestBody": events_request_body(MAX_BATCH),
        "x-scrm-errors": [400, 401, 413, 422, 503],
        "responses": {
            **_EVENT_ERRORS,
            "401": {
                "description": "`invalid_signature`: a missing, stale or wrong signature, "
                "also for an unknown tenant or one without a webhook secret."
            },
        },
    },
)
async def webhook_events(tenant_slug: str, request: Request) -> Response:
    """Signed events from a shop, mini-program or live-stream tool: one or a batch.
    An unknown tenant, or one without a secret, is answered as a bad signature is (401
    `invalid_signature`, same message), so the route does not tell which tenants exist."""
    result = await accept_signed_events(
        _ingest(request), tenant_slug, request.headers, await request.body()
    )
    return Response(result.model_dump_json(), status_code=202, media_type="application/json")


@router.post(
    "/events",
    status_code=202,
    response_model=IngestResult,
    openapi_extra={
        "requestBody": events_request_body(MAX_BATCH),
        "x-scrm-errors": [400, 401, 403, 413, 422, 503],
        "responses": _EVENT_ERRORS,
    },
)
async def api_events(principal: Operator, request: Request) -> Response:
    """The same events as the webhook, sent with an operator API key."""
    result = await accept_events(_ingest(request), principal.tenant, await request.body(), "api")
    return Response(result.model_dump_json(), status_code=202, media_type="application/json")


# -- integration settings -----------------------------------------------------------------


@router.put("/users/wecom-settings", response_model=WeComSettingsOut)
async def put_wecom_settings(
    body: WeComSettingsIn, principal: Admin, session: SessionDep, request: Request
) -> WeComSettingsOut:
    runtime: Runtime = request.app.state.runtime
    await service.configure_wecom(
        session,
        runtime.cipher,
        principal.tenant,
        corp_id=body.corp_id,
        token=body.token,
        encoding_aes_key=body.encoding_aes_key,
        secret=body.secret,
    )
    _ingest(request).directory.forget(principal.tenant_slug or "")
    return await get_wecom_settings(principal, session)


@router.get("/users/wecom-settings", response_model=WeComSettingsOut)
async def get_wecom_settings(principal: Admin, session: SessionDep) -> WeComSettingsOut:
    found = await repository.wecom_settings(session, principal.tenant)
    if found is None:
        raise NotFound("WeCom is not configured", code="wecom_not_configured")
    await session.refresh(found)
    return WeComSettingsOut(
        corp_id=found.corp_id,
        has_secret=found.secret_enc is not None,
        callback_path=f"/v1/wecom/{principal.tenant_slug}/callback",
        updated_at=found.updated_at,
    )


@router.post("/users/webhook-secrets", status_code=201, response_model=WebhookSecretCreated)
async def create_webhook_secret(
    principal: Admin, session: SessionDep, request: Request
) -> WebhookSecretCreated:
    runtime: Runtime = request.app.state.runtime
    secret_id, value = await service.create_webhook_secret(
        session, runtime.cipher, principal.tenant
    )
    _ingest(request).directory.forget(principal.tenant_slug or "")
    secrets = await repository.list_webhook_secrets(session, principal.tenant)
    created = next(s for s in secrets if s.id == secret_id)
    return WebhookSecretCreated(
        id=created.id, created_at=created.created_at, revoked_at=None, secret=value
    )


@router.get("/users/webhook-secrets", response_model=list[WebhookSecretOut])
async def list_webhook_secrets(principal: Admin, session: SessionDep) -> list[WebhookSecretOut]:
    secrets = await repository.list_webhook_secrets(session, principal.tenant)
    return [WebhookSecretOut.model_validate(s) for s in secrets]


@router.delete("/users/webhook-secrets/{secret_id}", response_model=WebhookSecretOut)
async def revoke_webhook_secret(
    secret_id: uuid.UUID, principal: Admin, session: SessionDep, request: Request
) -> WebhookSecretOut:
    revoked = await repository.revoke_webhook_secret(session, principal.tenant, secret_id)
    if revoked is None:
        raise NotFound("no such webhook secret")
    _ingest(request).directory.forget(principal.tenant_slug or "")
    return WebhookSecretOut.model_validate(revoked)


# -- staff and customer groups ----------------------------------------------------------


@router.get("/staff", response_model=list[StaffOut])
async def list_staff(principal: ContactReader, session: SessionDep) -> list[StaffOut]:
    """WeCom members who own contacts."""
    return [
        StaffOut.model_validate(s) for s in await repository.list_staff(session, principal.tenant)
    ]


@router.get("/groups", response_model=GroupPage)
async def list_groups(
    principal: Reader,
    session: SessionDep,
    cursor: Cursor = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> GroupPage:
    groups = await repository.list_groups(session, principal.tenant, after_id=cursor, limit=limit)
    next_cursor = str(groups[-1].id) if len(groups) == limit else None
    return GroupPage(items=[GroupOut.model_validate(g) for g in groups], next_cursor=next_cursor)


@router.get("/groups/{chat_id}", response_model=GroupDetail)
async def get_group(
    chat_id: str, principal: Reader, session: SessionDep, include_left: bool = False
) -> GroupDetail:
    """A customer group and its members; external members appear by contact id only."""
    group = await repository.get_group(session, principal.tenant, chat_id)
    if group is None:
        raise NotFound("no such group")
    members = await repository.group_members(
        session, principal.tenant, chat_id, include_left=include_left
    )
    return GroupDetail(
        **GroupOut.model_validate(group).model_dump(),
        members=[
            GroupMemberOut(
                member_type=m.member_type,
                staff_userid=m.member_id if m.member_type == 1 else None,
                contact_id=m.contact_id,
                joined_at=m.joined_at,
                join_scene=m.join_scene,
                left_at=m.left_at,
            )
            for m in members
        ],
    )


# -- contacts ------------------------------------------------------------------------------


@router.get("/contacts", response_model=ContactPage)
async def list_contacts(
    principal: ContactReader,
    session: SessionDep,
    request: Request,
    external_userid: str | None = None,
    phone: str | None = None,
    unionid: str | None = None,
    owner: str | None = None,
    lifecycle_stage: Annotated[
        str | None, Query(pattern="^(potential|new|active|silent|churned)$")
    ] = None,
    created_from: datetime | None = None,
    created_to: datetime | None = None,
    q: Annotated[str | None, Query(min_length=1, max_length=50)] = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> ContactPage:
    runtime: Runtime = request.app.state.runtime
    items, next_cursor = await service.list_contacts(
        session,
        runtime.cipher,
        principal,
        filters={
            "external_userid": external_userid,
            "phone": phone,
            "unionid": unionid,
            "owner": owner,
            "lifecycle_stage": lifecycle_stage,
            "created_from": created_from,
            "created_to": created_to,
            "q": q,
        },
        cursor=cursor,
        limit=limit,
    )
    return ContactPage(items=items, next_cursor=next_cursor)


@router.get("/contacts/{contact_id}", response_model=ContactDetail)
async def get_contact(
    contact_id: ReadableContact, principal: ContactReader, session: SessionDep, request: Request
) -> ContactDetail:
    runtime: Runtime = request.app.state.runtime
    return await service.contact_detail(session, runtime.cipher, principal, contact_id)


@router.patch("/contacts/{contact_id}", response_model=ContactDetail)
async def patch_contact(
    contact_id: WritableContact,
    body: ContactPatch,
    principal: ContactWriter,
    session: SessionDep,
    request: Request,
) -> ContactDetail:
    runtime: Runtime = request.app.state.runtime
    await service.patch_contact(
        session, runtime.cipher, principal, contact_id, attributes=body.attributes, name=body.name
    )
    return await service.contact_detail(session, runtime.cipher, principal, contact_id)


@router.delete("/contacts/{contact_id}")
async def erase_contact(
    contact_id: ErasableContact, principal: Admin, session: SessionDep, request: Request
) -> dict[str, Any]:
    """Erasure on request: identifying data destroyed, counts and ledgers kept."""
    runtime: Runtime = request.app.state.runtime
    pseudonym = await erasure.erase_contact(session, runtime.cipher, principal.tenant, contact_id)
    return {"id": str(contact_id), "erased": True, "pseudonym": pseudonym}


@router.get("/contacts/{contact_id}/events", response_model=TimelinePage)
async def contact_events(
    contact_id: ReadableContact,
    principal: ContactReader,
    session: SessionDep,
    cursor: Cursor = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> TimelinePage:
    items, next_cursor = await service.timeline(
        session, principal, contact_id, before_id=cursor, limit=limit
    )
    return TimelinePage(items=items, next_cursor=next_cursor)


@router.post("/contacts/{contact_id}/consent", status_code=201)
async def change_consent(
    contact_id: WritableContact, body: ConsentIn, principal: ContactWriter, session: SessionDep
) -> dict[str, Any]:
    contact = await service.visible_contact(session, principal, contact_id)
    change = await consent.record(
        session,
        contact.tenant_id,
        contact.id,
        channel=body.channel,
        opted_in=body.status == "opted_in",
        source=f"api:{principal.api_key_id}",
        note=body.note,
    )
    return {"channel": change.channel, "status": change.status, "changed_at": change.changed_at}


@router.get("/contacts/{contact_id}/consent")
async def read_consent(
    contact_id: ReadableContact, principal: ContactReader, session: SessionDep
) -> dict[str, Any]:
    contact = await service.visible_contact(session, principal, contact_id)
    changes = await consent.history(session, contact.tenant_id, contact.id)
    may = {
        channel: await consent.may_message(session, contact.tenant_id, contact.id, channel)
        for channel in consent.CHANNELS
        if channel != "all"
    }
    return {
        "may_message": may,
        "history": [
            {
                "channel": c.channel,
                "status": c.status,
                "source": c.source,
                "note": c.note,
                "changed_at": c.changed_at,
            }
            for c in changes
        ],
    }
