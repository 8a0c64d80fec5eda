"""HTTP routes of the users service (in/out only: rules live in service.py and ingest.py)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import PlainTextResponse, Response
from pydantic import TypeAdapter, ValidationError

from services.users import SERVICE, consent, erasure, repository, service
from services.users.directory import IngestConfig, TenantDirectory
from services.users.import_api import import_router
from services.users.ingest import Inbound, InboundWriter
from services.users.schemas import (
    MAX_BATCH,
    ConsentIn,
    ContactDetail,
    ContactPage,
    ContactPatch,
    EventIn,
    EventRejection,
    IngestResult,
    TimelinePage,
    UsersStatus,
    WebhookSecretCreated,
    WebhookSecretOut,
    WeComSettingsIn,
    WeComSettingsOut,
)
from services.users.settings import users_settings
from services.users.wecom_crypto import WeComCryptoError, parse_xml
from services.users.wecom_events import dedupe_key, event_type
from shared.auth import Principal, require
from shared.db import SessionDep
from shared.errors import InvalidInput, NotFound, ScrmError, Unauthorized, Unavailable
from shared.privacy import audit_unmasked_read
from shared.runtime import Runtime

router = APIRouter(prefix="/v1", tags=[SERVICE])
# First, so /v1/contacts/import and /v1/contacts/export are not taken for contact ids.
router.include_router(import_router)

Reader = Annotated[Principal, require("admin", "operator", "analyst")]
ContactReader = Annotated[Principal, require("admin", "operator", "analyst", "staff")]
ContactWriter = Annotated[Principal, require("admin", "operator", "staff")]
Admin = Annotated[Principal, require("admin")]
Operator = Annotated[Principal, require("admin", "operator")]
_EVENT = TypeAdapter(EventIn)


class _Ingest:
    """Per-process ingestion state: the group-commit writer and the settings cache."""

    def __init__(self, runtime: Runtime) -> None:
        settings = users_settings()
        self.writer = InboundWriter(
            runtime,
            batch_size=settings.ingest_batch_size,
            wait_ms=settings.ingest_batch_wait_ms,
        )
        self.directory = TenantDirectory(
            runtime.sessionmaker, runtime.cipher, settings.tenant_cache_seconds
        )


def _ingest(request: Request) -> _Ingest:
    state: _Ingest | None = getattr(request.app.state, "users_ingest", None)
    if state is None:
        state = _Ingest(request.app.state.runtime)
        request.app.state.users_ingest = state
    return state


@router.get("/users/status", response_model=UsersStatus)
async def status(principal: Reader, session: SessionDep, request: Request) -> UsersStatus:
    """The event types this service consumes and the caller's tenant backlog in it."""
    return await service.status(session, request.app.state.runtime, principal.tenant)


# -- WeCom callbacks ----------------------------------------------------------------------


class WeComRejected(ScrmError):
    status_code = 400
    code = "wecom_rejected"


def _check_skew(timestamp: str, max_skew: int, header: str) -> None:
    try:
        sent = int(timestamp)
    except ValueError:
        raise WeComRejected(f"{header} must be a unix timestamp", code="bad_timestamp") from None
    if max_skew and abs(time.time() - sent) > max_skew:
        raise WeComRejected(
            f"{header} is more than {max_skew} s away from now", code="stale_timestamp"
        )


def _crypto_error(exc: WeComCryptoError) -> ScrmError:
    if exc.reason == "invalid_signature":
        return Unauthorized("msg_signature does not match", code="invalid_signature")
    return WeComRejected(f"callback rejected: {exc.reason}", code=exc.reason)


async def _wecom_config(request: Request, slug: str) -> IngestConfig:
    config = await _ingest(request).directory.get(slug)
    if config.wecom is None:
        raise NotFound(f"WeCom is not configured for {slug!r}", code="wecom_not_configured")
    return config


@router.get("/wecom/{tenant_slug}/callback", response_class=PlainTextResponse)
async def wecom_verify_url(
    tenant_slug: str,
    request: Request,
    msg_signature: str,
    timestamp: str,
    nonce: str,
    echostr: str,
) -> PlainTextResponse:
    """WeCom's URL verification: answer the decrypted echostr."""
    config = await _wecom_config(request, tenant_slug)
    _check_skew(timestamp, users_settings().wecom_max_skew_seconds, "timestamp")
    assert config.wecom is not None
    try:
        plain = config.wecom.verify_url(msg_signature, timestamp, nonce, echostr)
    except WeComCryptoError as exc:
        raise _crypto_error(exc) from None
    return PlainTextResponse(plain)


@router.post("/wecom/{tenant_slug}/callback", response_class=PlainTextResponse)
async def wecom_callback(
    tenant_slug: str, request: Request, msg_signature: str, timestamp: str, nonce: str
) -> PlainTextResponse:
    """Verify, decrypt, store with a dedupe key, answer `success`; workers do the rest."""
    config = await _wecom_config(request, tenant_slug)
    _check_skew(timestamp, users_settings().wecom_max_skew_seconds, "timestamp")
    assert config.wecom is not None
    body = await request.body()
    try:
        plaintext = config.wecom.decrypt_callback(msg_signature, timestamp, nonce, body)
        msg = parse_xml(plaintext)
    except WeComCryptoError as exc:
        raise _crypto_error(exc) from None
    item = Inbound(
        config.tenant_id,
        "wecom",
        dedupe_key(msg, plaintext),
        event_type(msg),
        {"msg": msg, "xml": plaintext},
    )
    await _store(request, [item])
    return PlainTextResponse("success")


async def _store(request: Request, items: list[Inbound]) -> list[bool]:
    try:
        return await _ingest(request).writer.store(items)
    except OSError as exc:
        raise Unavailable("could not store the events; retry", details=str(exc)) from None


# -- signed webhooks and the event API ----------------------------------------------------


def _verify_webhook(config: IngestConfig, request: Request, body: bytes) -> None:
    timestamp = request.headers.get("x-scrm-timestamp")
    signature = request.headers.get("x-scrm-signature", "")
    if not timestamp or not signature.startswith("sha256="):
        raise Unauthorized(
            "send X-Scrm-Timestamp and X-Scrm-Signature: sha256=<hex>", code="invalid_signature"
        )
    _check_skew(timestamp, users_settings().webhook_max_skew_seconds, "X-Scrm-Timestamp")
    if not config.webhook_secrets:
        raise Unauthorized("no webhook secret is configured", code="invalid_signature")
    signed = timestamp.encode() + b"." + body
    given = signature.removeprefix("sha256=")
    for secret in config.webhook_secrets:
        expected = hmac.new(secret, signed, hashlib.sha256).hexdigest()
        if hmac.compare_digest(expected, given):
            return
    raise Unauthorized("signature does not match", code="invalid_signature")


async def _ingest_events(request: Request, tenant_id: uuid.UUID, body: bytes, via: str) -> Response:
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ScrmError("request body is not valid JSON", code="malformed_json") from None
    raw = (
        document.get("events") if isinstance(document, dict) and "events" in document else document
    )
    raw = raw if isinstance(raw, list) else [raw]
    if len(raw) > MAX_BATCH:
        raise InvalidInput(f"at most {MAX_BATCH} events per request", code="batch_too_large")
    items: list[Inbound] = []
    rejected: list[EventRejection] = []
    for index, candidate in enumerate(raw):
        try:
            event = _EVENT.validate_python(candidate)
        except ValidationError as exc:
            event_id = candidate.get("event_id") if isinstance(candidate, dict) else None
            rejected.append(
                EventRejection(
                    index=index,
                    event_id=event_id if isinstance(event_id, str) else None,
                    errors=[
                        {"loc": [str(p) for p in e["loc"]], "message": e["msg"]}
                        for e in exc.errors()
                    ],
                )
            )
            continue
        payload: dict[str, Any] = event.model_dump(mode="json", exclude_none=True)
        payload["via"] = via
        items.append(Inbound(tenant_id, "event", event.event_id, event.type, payload))
    if not items:
        raise InvalidInput(
            "no valid event in the request",
            details=[r.model_dump() for r in rejected],
        )
    stored = await _store(request, items)
    result = IngestResult(
        accepted=sum(stored), duplicates=len(stored) - sum(stored), rejected=rejected
    )
    return Response(result.model_dump_json(), status_code=202, media_type="application/json")


@router.post("/webhooks/{tenant_slug}/events", status_code=202, response_model=IngestResult)
async def webhook_events(tenant_slug: str, request: Request) -> Response:
    """Signed events from a shop, mini-program or live-stream tool: one or a batch."""
    config = await _ingest(request).directory.get(tenant_slug)
    body = await request.body()
    _verify_webhook(config, request, body)
    return await _ingest_events(request, config.tenant_id, body, "webhook")


@router.post("/events", status_code=202, response_model=IngestResult)
async def api_events(principal: Operator, request: Request) -> Response:
    """The same events as the webhook, sent with an operator API key."""
    return await _ingest_events(request, principal.tenant, await request.body(), "api")


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
    contact_id: uuid.UUID, principal: ContactReader, session: SessionDep, request: Request
) -> ContactDetail:
    runtime: Runtime = request.app.state.runtime
    detail, unmasked = await service.contact_detail(session, runtime.cipher, principal, contact_id)
    if unmasked:
        audit_unmasked_read(
            session,
            request,
            principal,
            subject_type="contact",
            subject_id=contact_id,
            fields=sorted({"name", *(i.kind for i in detail.identities)}),
        )
    return detail


@router.patch("/contacts/{contact_id}", response_model=ContactDetail)
async def patch_contact(
    contact_id: uuid.UUID,
    body: ContactPatch,
    principal: ContactWriter,
    session: SessionDep,
    request: Request,
) -> ContactDetail:
    runtime: Runtime = request.app.state.runtime
    await service.patch_contact(
        session, runtime.cipher, principal, contact_id, attributes=body.attributes, name=body.name
    )
    detail, _ = await service.contact_detail(session, runtime.cipher, principal, contact_id)
    return detail


@router.delete("/contacts/{contact_id}")
async def erase_contact(
    contact_id: uuid.UUID, principal: Admin, session: SessionDep, request: Request
) -> dict[str, Any]:
    """Erasure on request: identifying data destroyed, counts and ledgers kept."""
    runtime: Runtime = request.app.state.runtime
    pseudonym = await erasure.erase_contact(session, runtime.cipher, principal.tenant, contact_id)
    return {"id": str(contact_id), "erased": True, "pseudonym": pseudonym}


@router.get("/contacts/{contact_id}/events", response_model=TimelinePage)
async def contact_events(
    contact_id: uuid.UUID,
    principal: ContactReader,
    session: SessionDep,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> TimelinePage:
    if cursor is not None and not cursor.isdigit():
        raise InvalidInput("cursor is invalid", details={"field": "cursor"})
    items, next_cursor = await service.timeline(
        session, principal, contact_id, before_id=int(cursor) if cursor else None, limit=limit
    )
    return TimelinePage(items=items, next_cursor=next_cursor)


@router.post("/contacts/{contact_id}/consent", status_code=201)
async def change_consent(
    contact_id: uuid.UUID, body: ConsentIn, principal: ContactWriter, session: SessionDep
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
    contact_id: uuid.UUID, principal: ContactReader, session: SessionDep
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
