"""Brands, contacts (in the users service and the tagging read model) and calls the
tags tests share."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.users.models import Contact
from tests.helpers import bearer, make_key, make_tenant


class Brand:
    def __init__(self, tenant_id: uuid.UUID, keys: dict[str, str]) -> None:
        self.tenant_id = tenant_id
        self.keys = keys

    def headers(self, role: str = "operator") -> dict[str, str]:
        return bearer(self.keys[role])


async def make_brand(session: AsyncSession) -> Brand:
    tenant = await make_tenant(session)
    keys = {
        r: await make_key(session, tenant, r) for r in ("admin", "operator", "analyst", "staff")
    }
    return Brand(tenant.id, keys)


async def make_contact(
    session: AsyncSession, brand: Brand, *, owner: str | None = None, status: str = "live"
) -> uuid.UUID:
    """A contact of the users service and of the tagging read model (the brand's staff
    key is "staff-1")."""
    contact_id = uuid.uuid4()
    session.add(Contact(id=contact_id, tenant_id=brand.tenant_id, owner_staff_userid=owner))
    await session.flush()
    await session.execute(
        text(
            "INSERT INTO tagging_profiles (tenant_id, contact_id, owner_staff, status)"
            " VALUES (:t, :c, :o, :s)"
        ),
        {"t": brand.tenant_id, "c": contact_id, "o": owner, "s": status},
    )
    return contact_id


async def make_contacts(session: AsyncSession, brand: Brand, n: int) -> list[uuid.UUID]:
    """n contacts of the read model only (bulk paths read it alone)."""
    ids = [uuid.uuid4() for _ in range(n)]
    await session.execute(
        text(
            "INSERT INTO tagging_profiles (tenant_id, contact_id)"
            " SELECT :t, unnest(CAST(:ids AS uuid[]))"
        ),
        {"t": brand.tenant_id, "ids": ids},
    )
    return ids


async def create_group(client: httpx.AsyncClient, brand: Brand, **body: Any) -> int:
    body = {"name": f"g-{uuid.uuid4().hex[:8]}", "half_life_days": None, "floor": 0, **body}
    response = await client.post("/v1/tag-groups", json=body, headers=brand.headers())
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


async def create_tag(
    client: httpx.AsyncClient, brand: Brand, group_id: int, name: str | None = None
) -> int:
    response = await client.post(
        "/v1/tags",
        json={"group_id": group_id, "name": name or f"t-{uuid.uuid4().hex[:8]}"},
        headers=brand.headers(),
    )
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


async def tag_events(session: AsyncSession, brand: Brand) -> list[tuple[str, dict[str, Any]]]:
    rows = await session.execute(
        text(
            "SELECT type, payload FROM outbox_events"
            " WHERE tenant_id = :t AND type LIKE 'tag.%' ORDER BY id"
        ),
        {"t": brand.tenant_id},
    )
    return [(r.type, r.payload) for r in rows]


async def snapshot(session: AsyncSession, brand: Brand) -> list[Any]:
    """Everything the tags part stores for the brand."""
    found: list[Any] = []
    for table in ("tag_groups", "tags", "contact_tags", "contact_tag_history"):
        rows = await session.execute(
            text(f"SELECT * FROM {table} WHERE tenant_id = :t ORDER BY 1, 2, 3"),
            {"t": brand.tenant_id},
        )
        found.append([tuple(r) for r in rows])
    found.append(await tag_events(session, brand))
    return found
