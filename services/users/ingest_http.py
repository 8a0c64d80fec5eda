"""The ingestion endpoints' logic, and a fast path that serves them without routing.

WeCom callbacks and webhooks arrive by the thousand per second and their only
job is to be verified and stored. `IngestFastPath`, a front door of the app
(shared.app), recognises their two paths and answers them directly, ahead of
the framework's middleware stack, routing and dependency resolution (most of
the cost of such a request). It runs inside the request-context middleware,
so request ids, metrics, access logs and the error envelope are the same as
everywhere else; the FastAPI routes in api.py call the same functions and
document the contract.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

from pydantic import TypeAdapter, ValidationError
from starlette.types import Receive, Scope, Send

from services.users.directory import IngestConfig, TenantDirectory
from services.users.event_types import HASHED_PROPERTIES
from services.users.exceptions import WeComRejected
from services.users.ingest import Inbound, InboundWriter
from services.users.schemas import MAX_BATCH, EventIn, EventRejection, IngestResult
from services.users.settings import users_settings
from services.users.wecom_crypto import WeComCrypto, WeComCryptoError, parse_xml
from services.users.wecom_events import dedupe_key, event_type
from shared import jsonbody
from shared.errors import (
    InvalidInput,
    NotFound,
    ScrmError,
    Unauthorized,
    Unavailable,
    error_body,
)
from shared.runtime import Runtime

_EVENT = TypeAdapter(EventIn)


class IngestState:
    """Per-process ingestion state: the group-commit writer and the settings cache."""

    def __init__(self, runtime: Runtime) -> None:
        settings = users_settings()
        self.writer = InboundWriter(
            runtime,
            batch_size=settings.ingest_batch_size,
            wait_ms=settings.ingest_batch_wait_ms,
            writers=settings.ingest_writers,
            flood_events_per_second=settings.ingest_flood_events_per_second,
        )
        self.directory = TenantDirectory(
            runtime.sessionmaker, runtime.cipher, settings.tenant_cache_seconds
        )
        self.cipher = runtime.cipher


def ingest_state(app: Any) -> IngestState:
    state: IngestState | None = getattr(app.state, "users_ingest", None)
    if state is None:
        state = IngestState(app.state.runtime)
        app.state.users_ingest = state
    return state


def _check_skew(timestamp: str, max_skew: int, name: str) -> None:
    try:
        sent = int(timestamp)
    except ValueError:
        raise WeComRejected(f"{name} must be a unix timestamp", code="bad_timestamp") from None
    if max_skew and abs(time.time() - sent) > max_skew:
        raise WeComRejected(
            f"{name} is more than {max_skew} s away from now", code="stale_timestamp"
        )


def _crypto_error(exc: WeComCryptoError) -> ScrmError:
    if exc.reason == "invalid_signature":
        return _bad_wecom_signature()
    return WeComRejected(f"callback rejected: {exc.reason}", code=exc.reason)


def _require(query: Mapping[str, str], *names: str) -> list[str]:
    missing = [n for n in names if not query.get(n)]
    if missing:
        raise InvalidInput(
            f"missing query parameter(s): {', '.join(missing)}",
            details=[{"loc": ["query", n], "message": "Field required"} for n in missing],
        )
    return [query[n] for n in names]


async def _tenant_config(state: IngestState, slug: str) -> IngestConfig | None:
    """The tenant's settings, or None for an unknown slug. Callers answer None exactly
    as a bad signature, so that these unauthenticated routes do not tell which
    tenant slugs exist."""
    try:
        return await state.directory.get(slug)
    except NotFound:
        return None


def _bad_wecom_signature() -> Unauthorized:
    return Unauthorized("msg_signature does not match", code="invalid_signature")


async def _wecom(state: IngestState, slug: str, timestamp: str) -> tuple[uuid.UUID, WeComCrypto]:
    """The tenant and its WeCom crypto, once the timestamp is checked; an unknown tenant, or
    one without WeCom settings, is refused like a bad signature (a signature
    cannot be checked without the tenant's token)."""
    _check_skew(timestamp, users_settings().wecom_max_skew_seconds, "timestamp")
    config = await _tenant_config(state, slug)
    if config is None or config.wecom is None:
        raise _bad_wecom_signature()
    return config.tenant_id, config.wecom


async def verify_wecom_url(state: IngestState, slug: str, query: Mapping[str, str]) -> str:
    signature, timestamp, nonce, echostr = _require(
        query, "msg_signature", "timestamp", "nonce", "echostr"
    )
    _, wecom = await _wecom(state, slug, timestamp)
    try:
        return wecom.verify_url(signature, timestamp, nonce, echostr)
    except WeComCryptoError as exc:
        raise _crypto_error(exc) from None


async def accept_wecom_callback(
    state: IngestState, slug: str, query: Mapping[str, str], body: bytes
) -> str:
    """Verify, decrypt, store with a dedupe key; processing happens in the worker."""
    signature, timestamp, nonce = _require(query, "msg_signature", "timestamp", "nonce")
    tenant_id, wecom = await _wecom(state, slug, timestamp)
    try:
        plaintext = wecom.decrypt_callback(signature, timestamp, nonce, body)
        msg = parse_xml(plaintext)
    except WeComCryptoError as exc:
        raise _crypto_error(exc) from None
    item = Inbound(
        tenant_id,
        "wecom",
        dedupe_key(msg, plaintext),
        event_type(msg),
        # As received: the worker reads it again (and the raw XML has what the flat
        # reading leaves out, such as a group's member list).
        {"xml": plaintext},
    )
    await _store(state, [item])
    return "success"


async def _store(state: IngestState, items: list[Inbound]) -> list[bool]:
    try:
        return await state.writer.store(items)
    except OSError as exc:
        raise Unavailable("could not store the events; retry", details=str(exc)) from None


def _verify_signature(secrets: tuple[bytes, ...], headers: Mapping[str, str], body: bytes) -> None:
    timestamp = headers.get("x-scrm-timestamp")
    signature = headers.get("x-scrm-signature", "")
    if not timestamp or not signature.startswith("sha256="):
        raise Unauthorized(
            "send X-Scrm-Timestamp and X-Scrm-Signature: sha256=<hex>", code="invalid_signature"
        )
    _check_skew(timestamp, users_settings().webhook_max_skew_seconds, "X-Scrm-Timestamp")
    # No secret (an unknown tenant, or one without a secret yet) is answered as a
    # mismatch: which tenants exist is not this route's to tell.
    signed = timestamp.encode() + b"." + body
    given = signature.removeprefix("sha256=")
    for secret in secrets:
        expected = hmac.new(secret, signed, hashlib.sha256).hexdigest()
        if hmac.compare_digest(expected, given):
            return
    raise Unauthorized("signature does not match", code="invalid_signature")


async def accept_signed_events(
    state: IngestState, slug: str, headers: Mapping[str, str], body: bytes
) -> IngestResult:
    config = await _tenant_config(state, slug)
    _verify_signature(config.webhook_secrets if config else (), headers, body)
    assert config is not None  # nothing verifies without a secret
    return await accept_events(state, config.tenant_id, body, "webhook")


async def accept_events(
    state: IngestState, tenant_id: uuid.UUID, body: bytes, via: str
) -> IngestResult:
    """Validate each event (rejections come back with their index) and store the valid ones."""
    document = jsonbody.parse(body)
    # Text the database cannot store (U+0000) rejects its event, like any invalid field.
    check_text = jsonbody.may_hold_unstorable_text(body)
    raw = (
        document.get("events") if isinstance(document, dict) and "events" in document else document
    )
    raw = raw if isinstance(raw, list) else [raw]
    if len(raw) > MAX_BATCH:
        raise InvalidInput(f"at most {MAX_BATCH} events per request", code="batch_too_large")
    items: list[Inbound] = []
    rejected: list[EventRejection] = []
    for index, candidate in enumerate(raw):
        errors = (
            [{"loc": p["loc"], "message": p["message"]} for p in jsonbody.text_problems(candidate)]
            if check_text
            else []
        )
        if not errors:
            try:
                event = _EVENT.validate_python(candidate)
            except ValidationError as exc:
                errors = [
                    {"loc": [str(p) for p in e["loc"]], "message": e["msg"]} for e in exc.errors()
                ]
        if errors:
            event_id = candidate.get("event_id") if isinstance(candidate, dict) else None
            shown_id = event_id if isinstance(event_id, str) and "\x00" not in event_id else None
            rejected.append(EventRejection(index=index, event_id=shown_id, errors=errors))
            continue
        payload: dict[str, Any] = event.model_dump(mode="json", exclude_none=True)
        hashed = HASHED_PROPERTIES.get(event.type)
        if hashed:
            payload["properties"] = _hashed(state, tenant_id, payload["properties"], hashed)
        payload["via"] = via
        items.append(Inbound(tenant_id, "event", event.event_id, event.type, payload))
    if not items:
        raise InvalidInput(
            "no valid event in the request", details=[r.model_dump() for r in rejected]
        )
    stored = await _store(state, items)
    return IngestResult(
        accepted=sum(stored), duplicates=len(stored) - sum(stored), rejected=rejected
    )


def _hashed(
    state: IngestState, tenant_id: uuid.UUID, properties: dict[str, Any], names: dict[str, str]
) -> dict[str, Any]:
    """The properties with each of `names` replaced by its keyed hash (never stored in
    plain): the same value hashes alike within the tenant, and the hash cannot be
    reversed or matched without the key."""
    kept = {k: v for k, v in properties.items() if k not in names and k not in names.values()}
    for name, hashed in names.items():
        value = properties.get(name)
        if isinstance(value, str) and value.strip():
            kept[hashed] = state.cipher.blind_index(
                value.strip().lower(), kind=f"referral.{name}", tenant=str(tenant_id)
            ).hex()
    return kept


# -- the fast path -------------------------------------------------------------------------

_WECOM = re.compile(r"^/v1/wecom/([a-z0-9-]{1,63})/callback$")
_WEBHOOK = re.compile(r"^/v1/webhooks/([a-z0-9-]{1,63})/events$")


class _RouteLabel:
    """What the metrics middleware reads from scope["route"]."""

    def __init__(self, path: str) -> None:
        self.path = path


_WECOM_ROUTE = _RouteLabel("/v1/wecom/{tenant_slug}/callback")
_WEBHOOK_ROUTE = _RouteLabel("/v1/webhooks/{tenant_slug}/events")


class IngestFastPath:
    """Pure ASGI front door: POST callbacks and webhooks answered without routing."""

    def matches(self, scope: Scope) -> bool:
        if scope["method"] != "POST":
            return False
        path: str = scope["path"]
        return bool(_WECOM.match(path) or _WEBHOOK.match(path))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        wecom = _WECOM.match(path)
        webhook = None if wecom else _WEBHOOK.match(path)
        scope["route"] = _WECOM_ROUTE if wecom else _WEBHOOK_ROUTE
        state = ingest_state(scope["app"])
        try:
            body = await _read_body(receive)
            if wecom is not None:
                query = dict(parse_qsl(scope["query_string"].decode("latin-1")))
                answer = await accept_wecom_callback(state, wecom.group(1), query, body)
                await _respond(send, 200, b"text/plain; charset=utf-8", answer.encode())
            else:
                assert webhook is not None
                headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
                result = await accept_signed_events(state, webhook.group(1), headers, body)
                await _respond(send, 202, b"application/json", result.model_dump_json().encode())
        except ScrmError as exc:
            envelope = json.dumps(error_body(exc.code, exc.message, exc.details), default=str)
            await _respond(send, exc.status_code, b"application/json", envelope.encode())


async def _read_body(receive: Receive) -> bytes:
    # Its size is limited by the app's RequestGuard (shared.http_guard), as every body's.
    chunks: list[bytes] = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _respond(send: Send, status: int, content_type: bytes, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
