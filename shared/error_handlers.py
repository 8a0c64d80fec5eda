"""The web side of shared.errors: FastAPI's and Starlette's errors, and ours, answered
with the one JSON envelope.

    {"error": {"code": "...", "message": "...", "details": ...}}
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.errors import ScrmError, error_body

log = logging.getLogger("scrm.errors")


class RequestRefused(StarletteHTTPException):
    """A ScrmError found while the request is received (its body too large, its JSON
    refused: see shared.http_guard). An HTTPException, because FastAPI passes those
    raised by a body read on to the handlers and turns any other error into a 400."""

    def __init__(self, error: ScrmError) -> None:
        super().__init__(error.status_code, error.message)
        self.error = error


def error_response(
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(code, message, details), status_code=status, headers=headers)


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


def _validation_details(exc: RequestValidationError) -> list[dict[str, Any]]:
    details = []
    for err in exc.errors():
        details.append(
            {
                "loc": [str(part) for part in err.get("loc", ())],
                "message": err.get("msg", ""),
                "type": err.get("type", ""),
            }
        )
    return details


async def _scrm_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ScrmError)
    return error_response(exc.status_code, exc.code, exc.message, exc.details)


async def _request_refused(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestRefused)
    error = exc.error
    # The client may still be sending a body refused for its size.
    headers = {"Connection": "close"} if error.status_code == 413 else None
    return error_response(error.status_code, error.code, error.message, error.details, headers)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = _validation_details(exc)
    if any(d["type"] == "json_invalid" for d in details):
        return error_response(400, "malformed_json", "request body is not valid JSON", details)
    return error_response(422, "validation_error", "request is invalid", details)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    code = _STATUS_CODES.get(status, "server_error" if status >= 500 else "error")
    default_message = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
    message = exc.detail if isinstance(exc.detail, str) else default_message
    if status == 404 and message == "Not Found":
        message = "no such resource"
    return error_response(status, code, message, None, headers=getattr(exc, "headers", None))


async def _integrity_error(request: Request, exc: Exception) -> JSONResponse:
    log.warning("integrity error on %s %s: %s", request.method, request.url.path, exc)
    return error_response(409, "conflict", "the change conflicts with existing data")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ScrmError, _scrm_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestRefused, _request_refused)
    app.add_exception_handler(IntegrityError, _integrity_error)
    # Anything else is answered (500, with the request id) by
    # shared.observability.RequestContextMiddleware.
