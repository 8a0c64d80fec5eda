"""Idempotency-Key: concurrent and repeated requests produce one change and one answer."""

from __future__ import annotations

import asyncio

import httpx
from sqlalchemy import func, select

from shared.db import unit_of_work
from shared.models import ApiKey
from shared.runtime import Runtime
from tests.helpers import bearer, make_key, make_tenant


async def test_concurrent_requests_with_one_key_create_once(
    committed: Runtime, committed_client: httpx.AsyncClient
) -> None:
    async with unit_of_work(committed.sessionmaker) as session:
        tenant = await make_tenant(session)
        admin = await make_key(session, tenant, "admin")
    headers = {**bearer(admin), "Idempotency-Key": "create-analyst-1"}
    responses = await asyncio.gather(
        *(
            committed_client.post("/v1/admin/api-keys", json={"role": "analyst"}, headers=headers)
            for _ in range(20)
        )
    )
    assert {r.status_code for r in responses} == {201}
    assert len({r.json()["id"] for r in responses}) == 1, "every caller sees the first result"
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in responses) == 19
    async with committed.engine.connect() as conn:
        count = await conn.scalar(
            select(func.count())
            .select_from(ApiKey)
            .where(ApiKey.tenant_id == tenant.id, ApiKey.role == "analyst")
        )
    assert count == 1

    reused = await committed_client.post(
        "/v1/admin/api-keys", json={"role": "operator"}, headers=headers
    )
    assert reused.status_code == 422
    assert reused.json()["error"]["code"] == "idempotency_key_reused"


async def test_failed_request_does_not_burn_the_key(
    committed: Runtime, committed_client: httpx.AsyncClient
) -> None:
    async with unit_of_work(committed.sessionmaker) as session:
        platform = await make_key(session, None, "platform")
    headers = {**bearer(platform), "Idempotency-Key": "tenant-x"}
    bad = await committed_client.post(
        "/v1/admin/tenants", json={"slug": "x-1", "timezone": "Nowhere/City"}, headers=headers
    )
    assert bad.status_code == 422
    body = {"slug": "x-1", "timezone": "Asia/Shanghai"}
    fixed = await committed_client.post("/v1/admin/tenants", json=body, headers=headers)
    assert fixed.status_code == 201, "the failed attempt stored nothing under the key"
    replay = await committed_client.post("/v1/admin/tenants", json=body, headers=headers)
    assert replay.status_code == 201 and replay.json() == fixed.json()
    assert replay.headers["idempotent-replayed"] == "true"
