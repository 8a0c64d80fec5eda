"""Domain errors and the one JSON error envelope every 4xx/5xx answers with.

    {"error": {"code": "...", "message": "...", "details": ...}}

Services raise subclasses of `ScrmError`; `shared.error_handlers` maps them,
framework errors (validation, unknown routes) and unexpected failures to it.
Routers never catch-and-translate. This module imports no web framework, so
commands and workers that raise these errors do not load one.
"""

from __future__ import annotations

from typing import Any


class ScrmError(Exception):
    """Base of every expected error; `status_code` and `code` say how it is answered."""

    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, *, details: Any = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        if code is not None:
            self.code = code


class InvalidInput(ScrmError):
    status_code = 422
    code = "validation_error"


class Unauthorized(ScrmError):
    status_code = 401
    code = "unauthorized"


class Forbidden(ScrmError):
    status_code = 403
    code = "forbidden"


class NotFound(ScrmError):
    status_code = 404
    code = "not_found"


class Conflict(ScrmError):
    status_code = 409
    code = "conflict"


class PayloadTooLarge(ScrmError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaType(ScrmError):
    status_code = 415
    code = "unsupported_media_type"


class Unavailable(ScrmError):
    status_code = 503
    code = "unavailable"


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details}}
