"""The OpenAPI document as an integrator needs it: the API as it really answers.

FastAPI's document is refined (`install_openapi`):

- **security**: the `bearerAuth` scheme (`Authorization: Bearer scrm_...`) on
  every operation whose route requires a key (`require(...)`, shared.auth),
  with the roles it admits; none on /healthz, /readyz, /metrics, the WeCom
  callbacks and the signed webhooks (whose signature is their auth);
- **errors**: every 4xx an operation can answer, each with the one envelope
  `ErrorResponse` (shared.errors), instead of FastAPI's `HTTPValidationError`:
  422 everywhere, 400 and 413 where a body is read, 401/403 behind a key, 404
  for paths with ids, 409 for authenticated writes (or the list a route gives
  as `x-scrm-errors` in its `openapi_extra`);
- **Idempotency-Key**: the header, on the operations that honour it;
- **events**: a schema per type of the event catalog (shared.catalog), on
  which the body of `POST /v1/events` and the webhooks is built.

Parameters an operation lists in `openapi_extra` complete the ones FastAPI
found with the same name (descriptions of query parameters, for instance).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, get_args

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts
from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema

from shared.auth import KEY_PREFIX, roles_required
from shared.catalog import REF_TEMPLATE, openapi_schemas
from shared.idempotency import HEADER as IDEMPOTENCY_HEADER
from shared.idempotency import IdempotencyDep

SECURITY_SCHEME = "bearerAuth"
ERROR_SCHEMA = "ErrorResponse"
_MUTATING = {"post", "put", "patch", "delete"}
_FASTAPI_ERRORS = ("HTTPValidationError", "ValidationError")


class ErrorBody(BaseModel):
    code: str = Field(
        description="Stable, machine-readable: validation_error, malformed_json, "
        "unauthorized, forbidden, not_found, conflict, payload_too_large, ..."
    )
    message: str = Field(description="For a person reading logs; may change.")
    details: Any = Field(
        default=None,
        description="What failed: for validation_error a list of {loc, message, type}; "
        "for internal_error the request id.",
    )


class ErrorResponse(BaseModel):
    """The body of every 4xx and 5xx answer."""

    error: ErrorBody


STATUS_DESCRIPTIONS = {
    400: "`malformed_json` (the body is not JSON), or a request the route refuses as such.",
    401: "`unauthorized`: no API key, or an invalid or revoked one.",
    403: "`forbidden`: the key's role may not do this (details name the allowed roles).",
    404: "`not_found`: no such resource for the caller's tenant (another tenant's answers "
    "the same).",
    409: "`conflict`: the change conflicts with existing data.",
    413: "`payload_too_large`: the body is larger than the route accepts.",
    415: "`unsupported_media_type`: the body is not of the type the route reads.",
    422: "`validation_error`: details list the failing fields (`loc`, `message`, `type`).",
    503: "`unavailable` / `not_ready`: a dependency is unreachable; retry.",
}


def error_responses(*statuses: int, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """`responses` entries answering the error envelope; descriptions by `s<status>`."""
    return {
        str(status): {
            "description": descriptions.get(f"s{status}", STATUS_DESCRIPTIONS.get(status, "")),
            "content": {
                "application/json": {"schema": {"$ref": REF_TEMPLATE.format(model=ERROR_SCHEMA)}}
            },
        }
        for status in statuses
    }


def install_openapi(app: FastAPI) -> None:
    """Serve the refined document (FastAPI's, built when the routes change, then refined)."""
    build_base = app.openapi
    cached: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        base = build_base()
        if cached.get("base") is not base:
            cached["document"] = refine(copy.deepcopy(base), app)
            cached["base"] = base
        document: dict[str, Any] = cached["document"]
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def refine(document: dict[str, Any], app: FastAPI) -> dict[str, Any]:
    schemas: dict[str, Any] = document.setdefault("components", {}).setdefault("schemas", {})
    for name in _FASTAPI_ERRORS:
        schemas.pop(name, None)
    _add_schemas(schemas, _model_schemas(ErrorResponse))
    _add_schemas(schemas, openapi_schemas())
    document["components"]["securitySchemes"] = {
        SECURITY_SCHEME: {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": f"{KEY_PREFIX}...",
            "description": "An API key (`scrm apikey create`), shown once when created. "
            "Each operation names the roles it admits.",
        }
    }
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if not isinstance(route, APIRoute) or not route.include_in_schema:
            continue
        item = document["paths"].get(context.path_format or route.path_format, {})
        for method in route.methods or ():
            operation = item.get(method.lower())
            if operation is not None:
                dependant = getattr(context, "dependant", None) or route.dependant
                _refine_operation(operation, method.lower(), route, dependant)
    info = document.setdefault("info", {})
    info["description"] = (
        info.get("description", "")
        + "\n\nAuthenticate with `Authorization: Bearer scrm_...` (an API key); each "
        "operation names the roles it admits. Every 4xx and 5xx answer is an "
        '`ErrorResponse`, `{"error": {"code", "message", "details"}}`; any operation may '
        "also answer 500 `internal_error`, whose details give the request id (also in "
        "the `X-Request-ID` header)."
    ).strip()
    _check_references(document)
    return document


def _refine_operation(
    operation: dict[str, Any], method: str, route: APIRoute, dependant: Dependant
) -> None:
    calls = _dependency_calls(dependant)
    roles = sorted({role for call in calls for role in roles_required(call) or ()})
    if _idempotency_call() in calls:
        operation.setdefault("parameters", []).append(
            {
                "name": IDEMPOTENCY_HEADER,
                "in": "header",
                "required": False,
                "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                "description": "A retry with the same key returns the first answer "
                "(header `Idempotent-Replayed: true`); the same key for another "
                "request is refused (422 `idempotency_key_reused`).",
            }
        )
    _merge_parameters(operation)
    statuses = {422}
    declared = operation.pop("x-scrm-errors", None)
    if roles:
        operation["security"] = [{SECURITY_SCHEME: []}]
        operation["x-scrm-roles"] = roles
        note = f"Roles: {', '.join(roles)}."
        description = operation.get("description", "")
        operation["description"] = f"{description}\n\n{note}" if description else note
        statuses |= {401, 403}
        if method in _MUTATING:
            statuses.add(409)
        if "{" in route.path_format:
            statuses.add(404)
    if "requestBody" in operation:
        statuses |= {400, 413}
    if declared is not None:  # the route's own list (openapi_extra) beats the inference
        statuses = set(declared)
    responses: dict[str, Any] = operation.setdefault("responses", {})
    for status, entry in error_responses(*sorted(statuses)).items():
        responses.setdefault(str(status), entry)
    envelope = error_responses(400)["400"]["content"]
    for status, entry in responses.items():
        # FastAPI's own 422 (and any route's error entry without a body) get the envelope.
        if status.isdigit() and int(status) >= 400:
            entry["content"] = copy.deepcopy(envelope)
            if not entry.get("description") or entry["description"] == "Validation Error":
                entry["description"] = STATUS_DESCRIPTIONS.get(int(status), "")
    operation["responses"] = dict(sorted(responses.items()))


def _dependency_calls(dependant: Dependant) -> list[Callable[..., Any]]:
    calls: list[Callable[..., Any]] = []
    stack = list(dependant.dependencies)
    while stack:
        current = stack.pop()
        if current.call is not None:
            calls.append(current.call)
        stack.extend(current.dependencies)
    return calls


def _idempotency_call() -> Any:
    return get_args(IdempotencyDep)[1].dependency


def _merge_parameters(operation: dict[str, Any]) -> None:
    """Parameters listed twice (by FastAPI, then by openapi_extra) become one."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for parameter in operation.get("parameters", ()):
        key = (parameter["in"], parameter["name"].lower())
        if key in merged:
            merged[key].update(parameter)
        else:
            merged[key] = dict(parameter)
    if merged:
        operation["parameters"] = list(merged.values())


def _model_schemas(*models: type[BaseModel]) -> dict[str, Any]:
    _, definitions = models_json_schema(
        [(model, "validation") for model in models], ref_template=REF_TEMPLATE
    )
    found: dict[str, Any] = definitions.get("$defs", {})
    return found


def _add_schemas(schemas: dict[str, Any], extra: dict[str, Any]) -> None:
    for name, schema in extra.items():
        existing = schemas.get(name)
        if existing is not None and _comparable(existing) != _comparable(schema):
            raise ValueError(f"two different schemas are named {name!r} in the OpenAPI document")
        schemas[name] = schema


def _comparable(schema: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in schema.items() if k not in ("description", "examples")}


def _check_references(document: dict[str, Any]) -> None:
    """Every `$ref` names a component that exists (none of FastAPI's removed ones)."""
    schemas = document["components"]["schemas"]
    stack: list[Any] = [document]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.rsplit("/", 1)[-1] not in schemas:
                raise ValueError(f"the OpenAPI document refers to a missing schema {ref}")
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
