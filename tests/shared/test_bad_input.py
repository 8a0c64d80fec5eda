"""Bad input at the HTTP edge: a 4xx with the error envelope, and nothing stored.

Each class of bad input is refused by one shared mechanism (shared.params,
shared.jsonbody, shared.http_guard); these tests hold every route that
showed the problem to it, front doors included.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import time
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.users.models import Contact
from shared.db import unit_of_work
from shared.models import Tenant
from shared.runtime import Runtime
from tests.helpers import bearer, make_key, make_tenant
from tests.shared.test_api_contract import assert_envelope
from tests.users.support import WeComTenant, wecom_tenant

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
