"""Bad input at the HTTP edge: a 4xx with the error envelope, and nothing stored.

Each class of bad input is refused by one shared mechanism (shared.params,
shared.jsonbody, shared.http_guard); these tests hold every route that
showed the problem to it, front doors included.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.users.import_api import MAX_IMPORT_BYTES
from services.users.models import Contact
from shared.app import create_app
from shared.db import unit_of_work
from shared.events import SERVICES
from shared.jsonbody import MAX_JSON_DEPTH
from shared.models import Tenant
from shared.runtime import Runtime
from tests.helpers import bearer, make_key, make_tenant
from tests.shared.test_api_contract import assert_envelope
from tests.users.support import WeComTenant, post, wecom_tenant

TOO_BIG = 1208925819614629174706176  # 2**80
INT64_OVERFLOW = 2**63
SMALL_BODY_LIMIT = 4096


@dataclasses.dataclass
class Keys:
    tenant: Tenant
    admin: str
    operator: str
    platform: str
    contact_id: uuid.UUID


@pytest.fixture
async def keys(session: AsyncSession) -> Keys:
    tenant = await make_tenant(session)
    contact_id = uuid.uuid4()
    session.add(Contact(id=contact_id, tenant_id=tenant.id))
    await session.flush()
    return Keys(
        tenant,
        await make_key(session, tenant, "admin"),
        await make_key(session, tenant, "operator"),
        await make_key(session, None, "platform"),
        contact_id,
    )


@pytest.fixture
async def corp(committed: Runtime) -> WeComTenant:
    return await wecom_tenant(committed)


async def operator_key(runtime: Runtime, tenant_id: uuid.UUID) -> str:
    async with unit_of_work(runtime.sessionmaker) as session:
        return await make_key(session, await session.get(Tenant, tenant_id), "operator")


async def inbound_count(runtime: Runtime, tenant_id: uuid.UUID) -> int:
    async with runtime.engine.connect() as conn:
        found = await conn.execute(
            text("SELECT count(*) FROM inbound_events WHERE tenant_id = :t"), {"t": tenant_id}
        )
        return int(found.scalar_one())


def event(event_id: str, **properties: Any) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "type": "checkin",
        "occurred_at": "2026-11-20T10:00:00+08:00",
        "contact": {"phone": "13812341234"},
        "properties": properties,
    }


def signed_raw(corp: WeComTenant, body: bytes) -> dict[str, Any]:
    """Arguments for post(...) of a raw body signed as the integration signs it."""
    timestamp = str(int(time.time()))
    mac = hmac.new(corp.webhook_secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return {
        "url": f"/v1/webhooks/{corp.slug}/events",
        "content": body,
        "headers": {
            "content-type": "application/json",
            "X-Scrm-Timestamp": timestamp,
            "X-Scrm-Signature": f"sha256={mac.hexdigest()}",
        },
    }


def assert_refused_at(response: httpx.Response, status: int, code: str, *loc: str) -> None:
    error = assert_envelope(response, status, code)
    locations = [tuple(d["loc"]) for d in error["details"]]  # type: ignore[attr-defined]
    assert tuple(loc) in locations, error


# -- 1. integers beyond int64 in the path and the query ------------------------------------


@pytest.mark.parametrize("number", [TOO_BIG, INT64_OVERFLOW])
async def test_dead_letter_ids_beyond_int64_are_422(
    client: httpx.AsyncClient, keys: Keys, number: int
) -> None:
    headers = bearer(keys.platform)
    found = await client.get(f"/v1/admin/dlq/{number}", headers=headers)
    assert_refused_at(found, 422, "validation_error", "path", "dead_letter_id")
    replay = await client.post(f"/v1/admin/dlq/{number}/replay", headers=headers)
    assert_refused_at(replay, 422, "validation_error", "path", "dead_letter_id")
    # The largest id there can be is a plain "no such dead letter".
    assert_envelope(
        await client.get(f"/v1/admin/dlq/{2**63 - 1}", headers=headers), 404, "not_found"
    )


def cursor_routes(keys: Keys) -> list[tuple[str, str]]:
    """(path, key) of every id-keyed page."""
    return [
        ("/v1/admin/dlq", keys.admin),
        ("/v1/admin/audit-log", keys.admin),
        ("/v1/points/expiry-notices", keys.admin),
        (f"/v1/points/accounts/{keys.contact_id}/ledger", keys.admin),
        (f"/v1/contacts/{keys.contact_id}/events", keys.admin),
        ("/v1/groups", keys.admin),
    ]


@pytest.mark.parametrize(
    "cursor", [str(TOO_BIG), str(INT64_OVERFLOW), "\x00", "12\x00", "-1", "1.5", "٣", ""]
)
async def test_cursors_outside_int64_or_not_decimal_are_422(
    client: httpx.AsyncClient, keys: Keys, cursor: str
) -> None:
    for path, key in cursor_routes(keys):
        response = await client.get(path, params={"cursor": cursor}, headers=bearer(key))
        assert_refused_at(response, 422, "validation_error", "query", "cursor")


async def test_cursors_within_int64_are_served(client: httpx.AsyncClient, keys: Keys) -> None:
    for path, key in cursor_routes(keys):
        for cursor in ("1", str(2**63 - 1)):
            response = await client.get(path, params={"cursor": cursor}, headers=bearer(key))
            assert response.status_code == 200, (path, response.text)


async def test_cursors_are_strings_in_the_contract(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    for path in (
        "/v1/admin/dlq",
        "/v1/admin/audit-log",
        "/v1/points/expiry-notices",
        "/v1/points/accounts/{contact_id}/ledger",
        "/v1/contacts/{contact_id}/events",
        "/v1/groups",
    ):
        [cursor] = [p for p in paths[path]["get"]["parameters"] if p["name"] == "cursor"]
        assert {"type": "string", "pattern": "^[0-9]{1,19}$"} in cursor["schema"]["anyOf"], path


# -- 2. dates out of range -------------------------------------------------------------------


@pytest.mark.parametrize("month", ["0000-01", "9999-12", "2026-13", "2026-00", "1969-12", "26-01"])
async def test_months_out_of_range_are_422(
    client: httpx.AsyncClient, keys: Keys, month: str
) -> None:
    response = await client.get(
        "/v1/points/benefits/report", params={"month": month}, headers=bearer(keys.admin)
    )
    assert_refused_at(response, 422, "validation_error", "query", "month")


@pytest.mark.parametrize("month", ["1970-01", "2026-12", "9998-12"])
async def test_months_in_range_are_reported(
    client: httpx.AsyncClient, keys: Keys, month: str
) -> None:
    response = await client.get(
        "/v1/points/benefits/report", params={"month": month}, headers=bearer(keys.admin)
    )
    assert response.status_code == 200, response.text
    assert response.json()["month"] == month


# -- 3. text PostgreSQL cannot store: NUL, lone surrogates --------------------------------


async def test_nul_in_contact_attributes_is_422_and_nothing_is_saved(
    client: httpx.AsyncClient, keys: Keys
) -> None:
    url = f"/v1/contacts/{keys.contact_id}"
    for attributes, loc in (
        ({"tier": "gold\x00"}, ("body", "attributes", "tier")),
        ({"tier\x00": "gold"}, ("body", "attributes", "tier\\u0000")),
        (
            {"deep": {"list": ["ok", {"x": "\x00"}]}},
            ("body", "attributes", "deep", "list", "1", "x"),
        ),
    ):
        response = await client.patch(
            url, json={"attributes": attributes}, headers=bearer(keys.admin)
        )
        assert_refused_at(response, 422, "validation_error", *loc)
    lone_surrogate = b'{"attributes": {"tier": "\\ud800"}}'
    response = await client.patch(
        url,
        content=lone_surrogate,
        headers={**bearer(keys.admin), "content-type": "application/json"},
    )
    assert_refused_at(response, 422, "validation_error", "body", "attributes", "tier")
    saved = (await client.get(url, headers=bearer(keys.admin))).json()
    assert not saved.get("attributes"), saved
    # An escaped backslash before "u0000" is plain text, and is saved.
    fine = await client.patch(
        url,
        content=b'{"attributes": {"tier": "\\\\u0000"}}',
        headers={**bearer(keys.admin), "content-type": "application/json"},
    )
    assert fine.status_code == 200, fine.text
    assert fine.json()["attributes"] == {"tier": "\\u0000"}


async def test_nul_in_points_bodies_is_422(client: httpx.AsyncClient, keys: Keys) -> None:
    headers = bearer(keys.admin)
    adjustment = await client.post(
        f"/v1/points/accounts/{keys.contact_id}/adjustments",
        json={"points": 10, "reason": "goodwill\x00"},
        headers=headers,
    )
    assert_refused_at(adjustment, 422, "validation_error", "body", "reason")
    item = await client.post(
        "/v1/points/items",
        json={"sku": "cup-1", "kind": "coupon", "name": "Cup\x00", "coupon_value_fen": 500},
        headers=headers,
    )
    assert_refused_at(item, 422, "validation_error", "body", "name")
    config = (await client.get("/v1/points/config", headers=headers)).json()
    config["expiry_channels"] = ["in_app\x00"]
    put = await client.put("/v1/points/config", json=config, headers=headers)
    assert_refused_at(put, 422, "validation_error", "body", "expiry_channels", "0")
    # Nothing was booked, listed or configured.
    account = await client.get(f"/v1/points/accounts/{keys.contact_id}", headers=headers)
    assert account.status_code in (200, 404) and account.json().get("balance", 0) == 0
    assert (await client.get("/v1/points/items", headers=headers)).json()["items"] == []
    channels = (await client.get("/v1/points/config", headers=headers)).json()["expiry_channels"]
    assert "in_app\x00" not in channels


@pytest.mark.parametrize(
    ("path", "params", "loc"),
    [
        ("/v1/contacts", {"owner": "a\x00"}, ("query", "owner")),
        ("/v1/contacts", {"q": "\x00name"}, ("query", "q")),
        ("/v1/points/items", {"cursor": "\x00"}, ("query", "cursor")),
    ],
)
async def test_nul_in_the_query_string_is_422(
    client: httpx.AsyncClient, keys: Keys, path: str, params: dict[str, str], loc: tuple[str, ...]
) -> None:
    response = await client.get(path, params=params, headers=bearer(keys.admin))
    assert_refused_at(response, 422, "validation_error", *loc)


async def test_nul_in_the_path_is_422(client: httpx.AsyncClient, keys: Keys) -> None:
    response = await client.get("/v1/admin/tenants/acme%00", headers=bearer(keys.platform))
    assert_refused_at(response, 422, "validation_error", "path")


async def test_events_with_nul_are_rejected_one_by_one(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant
) -> None:
    """Through the API and the webhook front door alike, an event with text the database
    cannot store is rejected with its index, and the valid ones are kept."""
    operator = await operator_key(committed, corp.tenant_id)
    batch = {"events": [event("ok-1"), event("bad\x00id"), event("ok-2", note={"k\x00": 1})]}
    api = await committed_client.post("/v1/events", json=batch, headers=bearer(operator))
    assert api.status_code == 202, api.text
    result = api.json()
    assert result["accepted"] == 1
    assert [(r["index"], [e["loc"] for e in r["errors"]]) for r in result["rejected"]] == [
        (1, [["event_id"]]),
        (2, [["properties", "note", "k\\u0000"]]),
    ]
    webhook = await post(
        committed_client, corp.signed({"events": [event("ok-3"), event("bad-2", note="\x00")]})
    )
    assert webhook.status_code == 202, webhook.text
    assert webhook.json()["accepted"] == 1
    assert webhook.json()["rejected"][0]["index"] == 1
    assert webhook.json()["rejected"][0]["errors"][0]["loc"] == ["properties", "note"]
    only_bad = await committed_client.post(
        "/v1/events", json=event("nul\x00"), headers=bearer(operator)
    )
    assert_envelope(only_bad, 422, "validation_error")
    assert await inbound_count(committed, corp.tenant_id) == 2


# -- 4. JSON nested too deep -------------------------------------------------------------


def nested(levels: int) -> bytes:
    return b'{"events": ' + b"[" * levels + b"]" * levels + b"}"


async def test_deep_json_is_400_everywhere(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant
) -> None:
    operator = await operator_key(committed, corp.tenant_id)
    json_headers = {"content-type": "application/json"}
    deep = nested(10_000)
    api = await committed_client.post(
        "/v1/events", content=deep, headers={**bearer(operator), **json_headers}
    )
    error = assert_envelope(api, 400, "malformed_json")
    assert str(MAX_JSON_DEPTH) in str(error["message"])
    assert_envelope(await post(committed_client, signed_raw(corp, deep)), 400, "malformed_json")
    contact = await committed_client.patch(
        f"/v1/contacts/{uuid.uuid4()}",
        content=b'{"attributes": {"a": ' + b"[" * 10_000 + b"]" * 10_000 + b"}}",
        headers={**bearer(corp.admin), **json_headers},
    )
    assert_envelope(contact, 400, "malformed_json")
    assert await inbound_count(committed, corp.tenant_id) == 0


async def test_json_at_the_depth_limit_is_read(client: httpx.AsyncClient, keys: Keys) -> None:
    levels = MAX_JSON_DEPTH - 2  # the body object and attributes are two levels
    value = b"[" * levels + b"]" * levels
    response = await client.patch(
        f"/v1/contacts/{keys.contact_id}",
        content=b'{"attributes": {"a": ' + value + b"}}",
        headers={**bearer(keys.admin), "content-type": "application/json"},
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
async def test_numbers_jsonb_cannot_store_are_400(
    client: httpx.AsyncClient, keys: Keys, number: bytes
) -> None:
    response = await client.patch(
        f"/v1/contacts/{keys.contact_id}",
        content=b'{"attributes": {"a": ' + number + b"}}",
        headers={**bearer(keys.admin), "content-type": "application/json"},
    )
    assert_envelope(response, 400, "malformed_json")


# -- 5. body size ------------------------------------------------------------------------


@pytest.fixture
async def small_limit(committed: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    """A committing client on an app whose SCRM_MAX_BODY_BYTES is SMALL_BODY_LIMIT."""
    settings = committed.settings.model_copy(update={"max_body_bytes": SMALL_BODY_LIMIT})
    app = create_app(SERVICES, dataclasses.replace(committed, settings=settings))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


async def chunks(body: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


async def test_bodies_over_the_default_limit_are_413(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant
) -> None:
    operator = await operator_key(committed, corp.tenant_id)
    big = json.dumps(event("big", blob="x" * (1024 * 1024))).encode()
    headers = {**bearer(operator), "content-type": "application/json"}
    error = assert_envelope(
        await committed_client.post("/v1/events", content=big, headers=headers),
        413,
        "payload_too_large",
    )
    assert error["details"] == {"max_bytes": 1024 * 1024}
    assert_envelope(await post(committed_client, signed_raw(corp, big)), 413, "payload_too_large")
    assert await inbound_count(committed, corp.tenant_id) == 0


async def test_the_body_limit_is_a_setting_counted_on_chunked_bodies(
    committed: Runtime, small_limit: httpx.AsyncClient, corp: WeComTenant
) -> None:
    operator = await operator_key(committed, corp.tenant_id)
    headers = {**bearer(operator), "content-type": "application/json"}
    big = json.dumps(event("big", blob="x" * SMALL_BODY_LIMIT)).encode()
    declared = await small_limit.post("/v1/events", content=big, headers=headers)
    assert_envelope(declared, 413, "payload_too_large")
    assert declared.headers["connection"] == "close"
    chunked = await small_limit.post("/v1/events", content=chunks(big), headers=headers)
    assert_envelope(chunked, 413, "payload_too_large")
    signed = signed_raw(corp, big)
    assert_envelope(
        await small_limit.post(signed["url"], content=chunks(big), headers=signed["headers"]),
        413,
        "payload_too_large",
    )
    # Under the limit, chunked or not, the same route stores the event.
    small = json.dumps(event("small")).encode()
    accepted = await small_limit.post("/v1/events", content=chunks(small, 50), headers=headers)
    assert accepted.status_code == 202, accepted.text
    assert await inbound_count(committed, corp.tenant_id) == 1


async def test_a_large_attribute_is_413_and_not_saved(
    committed: Runtime, small_limit: httpx.AsyncClient, corp: WeComTenant
) -> None:
    contact_id = uuid.uuid4()
    async with unit_of_work(committed.sessionmaker) as session:
        session.add(Contact(id=contact_id, tenant_id=corp.tenant_id))
    url = f"/v1/contacts/{contact_id}"
    body = {"attributes": {"notes": "x" * SMALL_BODY_LIMIT}}
    response = await small_limit.patch(url, json=body, headers=bearer(corp.admin))
    assert_envelope(response, 413, "payload_too_large")
    saved = (await small_limit.get(url, headers=bearer(corp.admin))).json()
    assert not saved.get("attributes"), saved


async def test_the_csv_import_keeps_its_larger_limit(
    committed: Runtime, small_limit: httpx.AsyncClient, corp: WeComTenant
) -> None:
    rows = "".join(f"1380000{n:04d},Name {n}\n" for n in range(400))
    body = ("phone,name\n" + rows).encode()
    assert SMALL_BODY_LIMIT < len(body) < MAX_IMPORT_BYTES
    response = await small_limit.post(
        "/v1/contacts/import",
        content=body,
        headers={**bearer(corp.admin), "content-type": "text/csv"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["created"] == 400
    too_large = await small_limit.post(
        "/v1/contacts/import",
        content=b"phone\n",
        headers={
            **bearer(corp.admin),
            "content-type": "text/csv",
            "content-length": str(MAX_IMPORT_BYTES + 1),
        },
    )
    error = assert_envelope(too_large, 413, "payload_too_large")
    assert "split it" in str(error["message"])


async def test_the_request_context_covers_refusals(client: httpx.AsyncClient, keys: Keys) -> None:
    response = await client.get(
        "/v1/contacts",
        params={"owner": "\x00"},
        headers={**bearer(keys.admin), "X-Request-ID": "rid-1"},
    )
    assert_envelope(response, 422, "validation_error")
    assert response.headers["x-request-id"] == "rid-1"
