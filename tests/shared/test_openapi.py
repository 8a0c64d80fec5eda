"""The contract an integrator reads: /openapi.json as the API really answers, /docs
served without a CDN, and README's route list matching the app's routes."""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.routing import Route

from shared.app import create_app
from shared.catalog import catalog
from shared.events import SERVICES
from shared.openapi import ErrorResponse
from tests.conftest import ROOT

ROLES = {"admin", "operator", "analyst", "staff", "platform"}
# Answered without an API key: their own auth (a signature) or none.
UNAUTHENTICATED = {
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/v1/wecom/{tenant_slug}/callback"),
    ("POST", "/v1/wecom/{tenant_slug}/callback"),
    ("POST", "/v1/webhooks/{tenant_slug}/events"),
    ("POST", "/v1/sms/{tenant_slug}/receipts"),
}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return create_app(SERVICES).openapi()


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
    ]


def test_bearer_keys_are_the_security_of_every_authenticated_route(
    document: dict[str, Any],
) -> None:
    scheme = document["components"]["securitySchemes"]["bearerAuth"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    for method, path, operation in operations(document):
        if (method, path) in UNAUTHENTICATED:
            assert "security" not in operation, (method, path)
            assert "401" not in operation["responses"] or "signature" in str(operation)
        else:
            assert operation["security"] == [{"bearerAuth": []}], (method, path)
            assert set(operation["x-scrm-roles"]) <= ROLES
            assert {"401", "403"} <= set(operation["responses"]), (method, path)


def _filled(path: str, operation: dict[str, Any]) -> str:
    for parameter in operation.get("parameters", ()):
        if parameter["in"] != "path":
            continue
        schema = parameter.get("schema", {})
        value = "1" if schema.get("type") == "integer" else str(uuid.uuid4())
        path = path.replace("{" + parameter["name"] + "}", value)
    return path


async def test_the_document_says_which_routes_want_a_key(
    client: httpx.AsyncClient, document: dict[str, Any]
) -> None:
    """Each operation documented with security answers 401 without a key; the others
    answer without asking for one (the signed routes refuse the missing signature)."""
    for method, path, operation in operations(document):
        response = await client.request(method, _filled(path, operation))
        if "security" in operation:
            assert response.status_code == 401, (method, path, response.text)
            assert response.json()["error"]["code"] == "unauthorized"
        elif "/callback" in path or "/webhooks/" in path or "/receipts" in path:
            assert response.status_code in (401, 422), (method, path, response.text)
        else:
            assert response.status_code == 200, (method, path, response.text)


def test_errors_are_documented_as_the_envelope(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas
    assert schemas["ErrorResponse"]["properties"]["error"]["$ref"].endswith("/ErrorBody")
    assert set(schemas["ErrorBody"]["required"]) == {"code", "message"}
    for method, path, operation in operations(document):
        responses = operation["responses"]
        assert "422" in responses, (method, path)
        if "{" in path and "security" in operation:
            assert "404" in responses, (method, path)
        if "requestBody" in operation:
            assert {"400", "413"} <= set(responses), (method, path)
        for status, response in responses.items():
            if int(status) >= 400:
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, (path, status)
                assert response["description"], (path, status)
    assert "503" in document["paths"]["/readyz"]["get"]["responses"]
    assert "409" in document["paths"]["/v1/admin/tenants"]["post"]["responses"]


async def test_a_real_error_is_what_the_document_says(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/contacts", headers={"Authorization": "Bearer scrm_x"})
    assert response.status_code == 401
    ErrorResponse.model_validate(response.json())


def test_event_bodies_are_documented_from_the_catalog(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    inbound = schemas["InboundEvent"]["oneOf"]
    variants = {ref["$ref"].rsplit("/", 1)[1] for ref in inbound}
    for declared in catalog().inbound("events"):
        name = "InboundEvent." + declared.name.replace("*", "any")
        assert name in variants, name
        variant = schemas[name]
        assert variant["allOf"] == [{"$ref": "#/components/schemas/EventIn"}]
        model_ref = variant["properties"]["properties"]["$ref"]
        assert model_ref.rsplit("/", 1)[1] in schemas
    for path in ("/v1/events", "/v1/webhooks/{tenant_slug}/events"):
        body = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        shapes = body["schema"]["oneOf"]
        assert {"$ref": "#/components/schemas/InboundEvent"} in shapes
        assert any(s.get("type") == "array" and s["maxItems"] == 1000 for s in shapes)
        assert body["example"]["type"] in {t.name for t in catalog().inbound("events")}
    # A schema per type, in /docs too.
    for declared in catalog():
        ref = declared.model.__name__
        assert ref in schemas, declared.name


def test_webhook_headers_and_wecom_query_are_documented(document: dict[str, Any]) -> None:
    webhook = document["paths"]["/v1/webhooks/{tenant_slug}/events"]["post"]
    headers = {p["name"]: p for p in webhook["parameters"] if p["in"] == "header"}
    assert set(headers) == {"X-Scrm-Timestamp", "X-Scrm-Signature"}
    assert all(h["required"] for h in headers.values())
    assert "HMAC-SHA256" in headers["X-Scrm-Signature"]["description"]
    for method, names in (
        ("get", {"msg_signature", "timestamp", "nonce", "echostr"}),
        ("post", {"msg_signature", "timestamp", "nonce"}),
    ):
        operation = document["paths"]["/v1/wecom/{tenant_slug}/callback"][method]
        query = [p for p in operation["parameters"] if p["in"] == "query"]
        assert {p["name"] for p in query} == names and len(query) == len(names)
        assert all(p["required"] and p["description"] for p in query)
    post = document["paths"]["/v1/wecom/{tenant_slug}/callback"]["post"]
    assert "text/xml" in post["requestBody"]["content"]


def test_idempotency_key_is_documented_where_honoured(document: dict[str, Any]) -> None:
    adjust = document["paths"]["/v1/points/accounts/{contact_id}/adjustments"]["post"]
    assert "Idempotency-Key" in {p["name"] for p in adjust["parameters"]}
    me = document["paths"]["/v1/me"]["get"]
    assert "Idempotency-Key" not in {p["name"] for p in me.get("parameters", ())}


# -- /docs without a CDN ----------------------------------------------------------------------


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_docs_pages_load_only_assets_the_app_serves(
    client: httpx.AsyncClient, page: str
) -> None:
    response = await client.get(page)
    assert response.status_code == 200
    html = response.text
    urls = re.findall(r"""(?:src|href|spec-url)=["']([^"']+)["']""", html)
    urls += re.findall(r"""\burl:\s*["']([^"']+)["']""", html)
    assert urls and "/openapi.json" in urls
    assert not re.search(r"https?://|//cdn", html), "no outside URL"
    for url in urls:
        assert url.startswith("/"), url
        asset = await client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 100, url
    scripts = [u for u in urls if u.endswith(".js")]
    assert scripts
    for url in scripts:
        body = (await client.get(url)).content
        assert b"SwaggerUIBundle" in body or b"Redoc" in body, url


# -- README lists every route ---------------------------------------------------------------


def readme_routes() -> dict[tuple[str, str], str]:
    """README's route table: (method, path) -> the roles cell."""
    readme = (ROOT / "README.md").read_text()
    table = readme.split("| method | path | roles |", 1)[1].split("\n\n", 1)[0]
    routes: dict[tuple[str, str], str] = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        methods, path, roles = cells[0], cells[1].strip("`"), cells[2]
        for method in methods.replace("`", "").split(","):
            key = (method.strip(), path)
            assert key not in routes, f"README lists {key} twice"
            routes[key] = roles
    return routes


def app_routes() -> dict[tuple[str, str], frozenset[str] | None]:
    app = create_app(SERVICES)
    document = app.openapi()
    found: dict[tuple[str, str], frozenset[str] | None] = {}
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if not isinstance(route, Route):
            continue  # the docs' static assets
        path = context.path_format or route.path_format
        for method in (route.methods or set()) - {"HEAD"}:
            operation = document["paths"].get(path, {}).get(method.lower(), {})
            roles = operation.get("x-scrm-roles")
            found[(method, path)] = frozenset(roles) if roles else None
            assert isinstance(route, APIRoute) or method == "GET"
    return found


def test_readme_lists_every_route_with_its_roles() -> None:
    listed = readme_routes()
    served = app_routes()
    assert sorted(set(served) - set(listed)) == [], "routes README does not list"
    assert sorted(set(listed) - set(served)) == [], "README lists routes the app lacks"
    for key, roles in served.items():
        cell = listed[key]
        named = set(re.findall(r"\b(" + "|".join(ROLES) + r")\b", cell))
        if roles is None:
            assert not named, (key, cell)
        elif cell == "any key":
            assert roles == ROLES, key
        else:
            assert named == roles, (key, cell, sorted(roles))
