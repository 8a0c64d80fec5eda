"""What every request passes before a front door or a route reads it.

`RequestGuard` (wired by shared.app around both the front doors and FastAPI):

- a path or query string holding U+0000 is refused (422, naming the part),
  since PostgreSQL stores no such text;
- the body may not exceed SCRM_MAX_BODY_BYTES (413), or a route's own limit
  (`@body_limit`), enforced as it is received: a larger Content-Length is
  refused before a byte of the body is read, and a body without one is counted;
- a JSON body that FastAPI will parse for a route is loaded first by the one
  JSON loader (shared.jsonbody: depth, NUL, non-finite numbers), so every
  route refuses the same documents the same way. Routes that read their body
  themselves (a batch of events, a CSV file) are left to do so.

Refusals found while the body is read are raised from `receive` as
shared.error_handlers.RequestRefused, an HTTPException, which FastAPI lets through
from a body read to the error handlers; what escapes them is answered here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from fastapi import Request, params
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared import jsonbody
from shared.config import Settings
from shared.error_handlers import RequestRefused
from shared.errors import (
    InvalidInput,
    PayloadTooLarge,
    ScrmError,
    UnsupportedMediaType,
    error_body,
)

_BODY_LIMIT_ATTRIBUTE = "__scrm_body_limit__"
_NUL_MESSAGE = "must not contain the NUL character (U+0000)"

Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])


def body_limit(max_bytes: int, message: str | None = None) -> Callable[[Endpoint], Endpoint]:
    """Let a route take bodies up to `max_bytes` instead of SCRM_MAX_BODY_BYTES
    (`message` says what to do about a larger one)."""

    def mark(endpoint: Endpoint) -> Endpoint:
        setattr(endpoint, _BODY_LIMIT_ATTRIBUTE, (max_bytes, message))
        return endpoint

    return mark


CSV_MEDIA_TYPES = frozenset({"text/csv", "application/csv", "text/plain"})


async def csv_body(request: Request) -> bytes:
    """A CSV file sent as the request body (415 for another media type); its size is
    limited as it is received (the route's `body_limit`)."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type not in CSV_MEDIA_TYPES:
        raise UnsupportedMediaType(
            "send the CSV file as the request body with Content-Type: text/csv",
            details={"content_type": media_type or None},
        )
    body = bytearray()
    async for part in request.stream():
        body += part
    return bytes(body)


def _nul_in_target(scope: Scope) -> ScrmError | None:
    """U+0000 in the path or the query string, named by where it is."""
    if "\x00" in scope["path"]:
        return InvalidInput(
            f"the path {_NUL_MESSAGE}",
            details=[{"loc": ["path"], "message": _NUL_MESSAGE, "type": "text_unstorable"}],
        )
    query: bytes = scope.get("query_string", b"")
    if b"%00" not in query and b"\x00" not in query:
        return None
    names = [
        name.replace("\x00", "\\u0000")
        for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True)
        if "\x00" in name or "\x00" in value
    ]
    if not names:  # "%00" in a form the query parser does not decode
        return None
    return InvalidInput(
        f"query parameter {', '.join(names)} {_NUL_MESSAGE}",
        details=[
            {"loc": ["query", name], "message": _NUL_MESSAGE, "type": "text_unstorable"}
            for name in names
        ],
    )


def _header(scope: Scope, wanted: bytes) -> bytes | None:
    for name, value in scope["headers"]:
        if name == wanted:
            return bytes(value)
    return None


def _declared_length(scope: Scope) -> int | None:
    value = _header(scope, b"content-length")
    return int(value) if value is not None and value.isdigit() else None


def _has_body(scope: Scope) -> bool:
    if _header(scope, b"transfer-encoding") is not None:
        return True
    length = _header(scope, b"content-length")
    return length is not None and length.strip() != b"0"


def _fastapi_parses_json(route: Any, scope: Scope) -> bool:
    """Whether FastAPI will json-load the body for `route` (a body model, JSON media type)."""
    if not isinstance(route, APIRoute) or route.body_field is None:
        return False
    if isinstance(route.body_field.field_info, params.Form):
        return False
    content_type = (_header(scope, b"content-type") or b"").partition(b";")[0].strip().lower()
    return content_type == b"application/json" or (
        content_type.startswith(b"application/") and content_type.endswith(b"+json")
    )


class _GuardedBody:
    """`receive` for one request: limits the body and loads JSON the route will parse."""

    __slots__ = ("_check_json", "_default_limit", "_first", "_receive", "_received", "_scope")

    def __init__(self, scope: Scope, receive: Receive, default_limit: int, check_json: bool):
        self._scope = scope
        self._receive = receive
        self._default_limit = default_limit
        self._check_json = check_json
        self._first = True
        self._received = 0

    def _limit(self) -> tuple[int, str | None]:
        # Known once routed: the first read of the body comes from the route.
        endpoint = getattr(self._scope.get("route"), "endpoint", None)
        own: tuple[int, str | None] | None = getattr(endpoint, _BODY_LIMIT_ATTRIBUTE, None)
        return own if own is not None else (self._default_limit, None)

    def _too_large(self) -> RequestRefused:
        limit, message = self._limit()
        return RequestRefused(
            PayloadTooLarge(
                message or f"request body is larger than {limit} bytes",
                details={"max_bytes": limit},
            )
        )

    async def receive(self) -> Message:
        if self._first:
            self._first = False
            declared = _declared_length(self._scope)
            if declared is not None and declared > self._limit()[0]:
                raise self._too_large()
            if self._check_json and _fastapi_parses_json(self._scope.get("route"), self._scope):
                return await self._json_body()
        return await self._counted()

    async def _counted(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self._received += len(message.get("body", b""))
            if self._received > self._limit()[0]:
                raise self._too_large()
        return message

    async def _json_body(self) -> Message:
        chunks: list[bytes] = []
        while True:
            message = await self._counted()
            if message["type"] != "http.request":
                return message  # the client is gone: nothing to answer
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if body:
            try:
                jsonbody.loads(body)
            except ScrmError as exc:
                raise RequestRefused(exc) from None
        return {"type": "http.request", "body": body, "more_body": False}


class RequestGuard:
    """Pure ASGI: see the module docstring. `check_json=False` where the app loads its
    JSON itself (front doors use shared.jsonbody directly)."""

    def __init__(self, app: ASGIApp, *, check_json: bool = True) -> None:
        self.app = app
        self.check_json = check_json
        self._default_limit: int | None = None

    def _max_body_bytes(self, scope: Scope) -> int:
        if self._default_limit is None:
            runtime = getattr(scope["app"].state, "runtime", None) if "app" in scope else None
            settings = runtime.settings if runtime is not None else None
            self._default_limit = (
                settings.max_body_bytes
                if isinstance(settings, Settings)
                else Settings.model_fields["max_body_bytes"].default
            )
        return self._default_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refused = _nul_in_target(scope)
        if refused is not None:
            await answer(send, refused)
            return
        if not _has_body(scope):
            await self.app(scope, receive, send)
            return
        limit = self._max_body_bytes(scope)
        if not self.check_json:
            # A front door: no route of its own limit, and the server delivers no more
            # than a Content-Length within the limit (the flood path stays unwrapped).
            declared = _declared_length(scope)
            if declared is not None and declared <= limit:
                await self.app(scope, receive, send)
                return
        body = _GuardedBody(scope, receive, limit, self.check_json)
        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, body.receive, tracked_send)
        except RequestRefused as exc:
            if started:
                raise
            await answer(send, exc.error)


async def answer(send: Send, error: ScrmError) -> None:
    """The error envelope, as a complete response; a refused body closes the connection
    (the client may still be sending it)."""
    payload = json.dumps(error_body(error.code, error.message, error.details)).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    if error.status_code == 413:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
