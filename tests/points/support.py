"""Members with points accounts, and the calls the tests make."""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import text

from services.users.models import Contact
from shared.db import unit_of_work
from shared.runtime import Runtime
from tests.helpers import bearer, make_key, make_tenant


@dataclass
class Brand:
    tenant_id: uuid.UUID
    slug: str
    keys: dict[str, str]

    def headers(self, role: str = "operator", key: str | None = None) -> dict[str, str]:
        headers = bearer(self.keys[role])
        if key is not None:
            headers["Idempotency-Key"] = key
        return headers


async def make_brand(runtime: Runtime) -> Brand:
    async with unit_of_work(runtime.sessionmaker) as session:
        tenant = await make_tenant(session)
        keys = {
            role: await make_key(session, tenant, role)
            for role in ("admin", "operator", "analyst", "staff")
        }
    return Brand(tenant.id, tenant.slug, keys)


async def make_member(runtime: Runtime, brand: Brand, *, owner: str | None = None) -> uuid.UUID:
    """A contact of the brand; a staff key acts only on those its staff member (the
    brand's staff key is "staff-1") owns."""
    contact_id = uuid.uuid4()
    async with unit_of_work(runtime.sessionmaker) as session:
        session.add(Contact(id=contact_id, tenant_id=brand.tenant_id, owner_staff_userid=owner))
    return contact_id


async def adjust(
    client: httpx.AsyncClient,
    brand: Brand,
    contact: uuid.UUID,
    points: int,
    *,
    key: str | None = None,
    reason: str = "test",
) -> httpx.Response:
    return await client.post(
        f"/v1/points/accounts/{contact}/adjustments",
        json={"points": points, "reason": reason},
        headers=brand.headers("operator", key),
    )


async def redeem(
    client: httpx.AsyncClient,
    brand: Brand,
    contact: uuid.UUID,
    points: int,
    *,
    key: str | None = None,
    role: str = "operator",
) -> httpx.Response:
    return await client.post(
        f"/v1/points/accounts/{contact}/redemptions",
        json={"points": points, "reason": "coupon"},
        headers=brand.headers(role, key),
    )


async def balance(client: httpx.AsyncClient, brand: Brand, contact: uuid.UUID) -> int:
    response = await client.get(f"/v1/points/accounts/{contact}", headers=brand.headers())
    assert response.status_code == 200, response.text
    value: int = response.json()["balance"]
    return value


async def rows(runtime: Runtime, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    async with runtime.engine.connect() as conn:
        return [tuple(r) for r in await conn.execute(text(sql), params)]


async def verify(runtime: Runtime, brand: Brand) -> list[str]:
    from services.points.ledger.verify import verify_tenant

    async with unit_of_work(runtime.sessionmaker) as session:
        _, violations = await verify_tenant(session, brand.tenant_id)
    return [str(v) for v in violations]


class AlertReceiver:
    """A local HTTP endpoint standing in for a tenant's alert webhook (the `receiver`
    fixture of tests/points/conftest.py serves one)."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.fail = False

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
        body = await reader.readexactly(length)
        status = b"500 Oops" if self.fail else b"200 OK"
        if not self.fail:
            self.bodies.append(json.loads(body))
        writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()
