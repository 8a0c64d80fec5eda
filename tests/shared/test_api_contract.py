"""The HTTP contract every service shares: error envelope, auth, RBAC, tenant isolation."""

from __future__ import annotations

import uuid

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from shared import auth
from tests.helpers import bearer, make_key, make_tenant

ROLES = ("admin", "operator", "analyst", "staff", "platform")


def assert_envelope(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return dict(body["error"])


async def test_unknown_route_answers_the_envelope(client: httpx.AsyncClient) -> None:
    assert_envelope(await client.get("/v1/no-such-thing"), 404, "not_found")


async def test_wrong_method_answers_the_envelope(client: httpx.AsyncClient) -> None:
    assert_envelope(await client.put("/healthz"), 405, "method_not_allowed")


async def test_missing_auth(client: httpx.AsyncClient) -> None:
    error = assert_envelope(await client.get("/v1/me"), 401, "unauthorized")
    assert "Authorization" in str(error["message"])


@pytest.mark.parametrize(
    "header",
    ["Basic abc", "Bearer", "Bearer scrm_not-a-real-key", "Bearer something-else", "scrm_x"],
)
async def test_bad_credentials(client: httpx.AsyncClient, header: str) -> None:
    response = await client.get("/v1/me", headers={"Authorization": header})
    assert_envelope(response, 401, "unauthorized")


async def test_revoked_key_is_refused(client: httpx.AsyncClient, session: AsyncSession) -> None:
    tenant = await make_tenant(session)
    admin = await make_key(session, tenant, "admin")
    key, plaintext = await auth.create_api_key(session, tenant_id=tenant.id, role="operator")
    assert (await client.get("/v1/me", headers=bearer(plaintext))).status_code == 200
    revoked = await client.delete(f"/v1/admin/api-keys/{key.id}", headers=bearer(admin))
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    again = await client.delete(f"/v1/admin/api-keys/{key.id}", headers=bearer(admin))
    assert again.json()["revoked_at"] == revoked.json()["revoked_at"]
    error = assert_envelope(
        await client.get("/v1/me", headers=bearer(plaintext)), 401, "unauthorized"
    )
    assert "revoked" in str(error["message"])


async def test_malformed_json(client: httpx.AsyncClient, session: AsyncSession) -> None:
    admin = await make_key(session, await make_tenant(session), "admin")
    response = await client.post(
        "/v1/admin/api-keys",
        content=b'{"role": "analyst",',
        headers={**bearer(admin), "content-type": "application/json"},
    )
    assert_envelope(response, 400, "malformed_json")


@pytest.mark.parametrize(
    "body",
    [
        {"role": 5},
        {"role": "root"},
        {},
        {"role": "analyst", "name": ["x"]},
        {"role": "analyst", "x": 1},
    ],
)
async def test_wrong_types(client: httpx.AsyncClient, session: AsyncSession, body: object) -> None:
    tenant = await make_tenant(session)
    admin = await make_key(session, tenant, "admin")
    before = len(await auth.list_api_keys(session, tenant.id))
    response = await client.post("/v1/admin/api-keys", json=body, headers=bearer(admin))
    error = assert_envelope(response, 422, "validation_error")
    assert isinstance(error["details"], list) and error["details"]
    assert len(await auth.list_api_keys(session, tenant.id)) == before


async def test_wrong_path_parameter_type(client: httpx.AsyncClient, session: AsyncSession) -> None:
    admin = await make_key(session, await make_tenant(session), "admin")
    response = await client.get("/v1/admin/api-keys/not-a-uuid", headers=bearer(admin))
    assert_envelope(response, 422, "validation_error")


async def test_me_answers_tenant_and_role(client: httpx.AsyncClient, session: AsyncSession) -> None:
    tenant = await make_tenant(session)
    for role in ("admin", "operator", "analyst", "staff"):
        body = (
            await client.get("/v1/me", headers=bearer(await make_key(session, tenant, role)))
        ).json()
        assert body["role"] == role
        assert body["tenant"]["slug"] == tenant.slug
        assert body["tenant"]["timezone"] == "Asia/Shanghai"
        assert body["may_read_personal_data"] is (role in ("admin", "operator"))
    platform = (
        await client.get("/v1/me", headers=bearer(await make_key(session, None, "platform")))
    ).json()
    assert platform["role"] == "platform" and platform["tenant"] is None


# The RBAC matrix: (method, path template, roles admitted). {key} and {slug} are
# filled per test; every other role must get 403.
MATRIX = [
    ("GET", "/v1/me", {"admin", "operator", "analyst", "staff", "platform"}),
    ("GET", "/v1/admin/tenants", {"platform"}),
    ("POST", "/v1/admin/tenants", {"platform"}),
    ("GET", "/v1/admin/tenants/{slug}", {"platform"}),
    ("POST", "/v1/admin/tenants/{slug}/api-keys", {"platform"}),
    ("GET", "/v1/admin/api-keys", {"admin"}),
    ("POST", "/v1/admin/api-keys", {"admin"}),
    ("GET", "/v1/admin/api-keys/{key}", {"admin"}),
    ("DELETE", "/v1/admin/api-keys/{key}", {"admin"}),
    ("GET", "/v1/admin/audit-log", {"admin", "platform"}),
    ("GET", "/v1/admin/dlq", {"admin", "platform"}),
    ("GET", "/v1/users/status", {"admin", "operator", "analyst"}),
    ("GET", "/v1/tagging/status", {"admin", "operator", "analyst"}),
    ("GET", "/v1/campaigns/status", {"admin", "operator", "analyst"}),
    ("GET", "/v1/points/status", {"admin", "operator", "analyst"}),
]


@pytest.mark.parametrize(("method", "template", "allowed"), MATRIX)
async def test_rbac_matrix(
    client: httpx.AsyncClient,
    session: AsyncSession,
    method: str,
    template: str,
    allowed: set[str],
) -> None:
    tenant = await make_tenant(session)
    keys = {
        role: await make_key(session, None if role == "platform" else tenant, role)
        for role in ROLES
    }
    for role in ROLES:
        target, _ = await auth.create_api_key(session, tenant_id=tenant.id, role="analyst")
        path = template.format(key=target.id, slug=tenant.slug)
        body = None
        if method == "POST":
            body = (
                {"slug": f"n-{uuid.uuid4().hex[:8]}"}
                if path == "/v1/admin/tenants"
                else {"role": "analyst"}
            )
        response = await client.request(method, path, json=body, headers=bearer(keys[role]))
        if role in allowed:
            assert response.status_code in (200, 201), (role, path, response.text)
        else:
            assert_envelope(response, 403, "forbidden")


async def test_tenant_isolation(client: httpx.AsyncClient, session: AsyncSession) -> None:
    """A key of tenant A gets 404 on tenant B's objects, never their data."""
    a, b = await make_tenant(session), await make_tenant(session)
    admin_a = await make_key(session, a, "admin")
    b_key, _ = await auth.create_api_key(session, tenant_id=b.id, role="operator")
    for method in ("GET", "DELETE"):
        response = await client.request(
            method, f"/v1/admin/api-keys/{b_key.id}", headers=bearer(admin_a)
        )
        assert_envelope(response, 404, "not_found")
    await session.refresh(b_key)
    assert b_key.revoked_at is None
    listed = (await client.get("/v1/admin/api-keys", headers=bearer(admin_a))).json()
    assert str(b_key.id) not in {k["id"] for k in listed}
    unknown = await client.get(f"/v1/admin/api-keys/{uuid.uuid4()}", headers=bearer(admin_a))
    assert (
        unknown.json()
        == (await client.get(f"/v1/admin/api-keys/{b_key.id}", headers=bearer(admin_a))).json()
    ), "another tenant's object must look exactly like a missing one"


async def test_api_key_shown_once_and_stored_hashed(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    tenant = await make_tenant(session)
    admin = await make_key(session, tenant, "admin")
    created = (
        await client.post("/v1/admin/api-keys", json={"role": "operator"}, headers=bearer(admin))
    ).json()
    assert created["key"].startswith("scrm_")
    fetched = (
        await client.get(f"/v1/admin/api-keys/{created['id']}", headers=bearer(admin))
    ).json()
    assert "key" not in fetched
    stored = await auth.get_api_key(session, tenant.id, uuid.UUID(created["id"]))
    assert created["key"].encode() not in stored.key_hash
    assert stored.key_hash == auth.hash_key(created["key"])
    assert (await client.get("/v1/me", headers=bearer(created["key"]))).json()["role"] == "operator"


async def test_staff_key_needs_a_staff_userid(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    admin = await make_key(session, await make_tenant(session), "admin")
    response = await client.post(
        "/v1/admin/api-keys", json={"role": "staff"}, headers=bearer(admin)
    )
    assert_envelope(response, 422, "validation_error")
    ok = await client.post(
        "/v1/admin/api-keys",
        json={"role": "staff", "staff_userid": "zhangsan"},
        headers=bearer(admin),
    )
    assert ok.status_code == 201 and ok.json()["staff_userid"] == "zhangsan"


async def test_platform_creates_tenants_and_keys(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    platform = await make_key(session, None, "platform")
    created = await client.post(
        "/v1/admin/tenants",
        json={"slug": "brand-x", "name": "Brand X", "timezone": "Asia/Tokyo"},
        headers=bearer(platform),
    )
    assert created.status_code == 201 and created.json()["timezone"] == "Asia/Tokyo"
    dup = await client.post("/v1/admin/tenants", json={"slug": "brand-x"}, headers=bearer(platform))
    assert_envelope(dup, 409, "conflict")
    for bad in ({"slug": "Bad Slug"}, {"slug": "ok", "timezone": "Mars/Base"}):
        assert_envelope(
            await client.post("/v1/admin/tenants", json=bad, headers=bearer(platform)),
            422,
            "validation_error",
        )
    key = await client.post(
        "/v1/admin/tenants/brand-x/api-keys", json={"role": "admin"}, headers=bearer(platform)
    )
    me = (await client.get("/v1/me", headers=bearer(key.json()["key"]))).json()
    assert me["tenant"]["slug"] == "brand-x" and me["role"] == "admin"
    missing = await client.post(
        "/v1/admin/tenants/nope/api-keys", json={"role": "admin"}, headers=bearer(platform)
    )
    assert_envelope(missing, 404, "not_found")


async def test_audit_log_records_mutations(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    tenant, other = await make_tenant(session), await make_tenant(session)
    admin = await make_key(session, tenant, "admin")
    await make_key(session, other, "admin")
    me = (await client.get("/v1/me", headers=bearer(admin))).json()
    created = (
        await client.post("/v1/admin/api-keys", json={"role": "analyst"}, headers=bearer(admin))
    ).json()
    await client.delete(f"/v1/admin/api-keys/{created['id']}", headers=bearer(admin))
    await client.post(
        "/v1/admin/api-keys", json={"role": "bogus"}, headers=bearer(admin)
    )  # rejected
    log = (await client.get("/v1/admin/audit-log", headers=bearer(admin))).json()
    actions = [
        (e["action"], e["target"].get("api_key_id") or e["target"].get("key_id"))
        for e in log["items"]
    ]
    assert actions == [
        ("DELETE /v1/admin/api-keys/{key_id}", created["id"]),
        ("POST /v1/admin/api-keys", created["id"]),
    ], "reads and rejected requests are not audited; every committed change is"
    entry = log["items"][0]
    assert entry["api_key_id"] == me["api_key_id"] and entry["role"] == "admin"
    assert entry["tenant_id"] == str(tenant.id) and entry["created_at"] and entry["request_id"]


async def test_audit_log_paginates(client: httpx.AsyncClient, session: AsyncSession) -> None:
    admin = await make_key(session, await make_tenant(session), "admin")
    for _ in range(5):
        await client.post("/v1/admin/api-keys", json={"role": "analyst"}, headers=bearer(admin))
    seen: list[int] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (
            await client.get("/v1/admin/audit-log", params=params, headers=bearer(admin))
        ).json()
        seen += [e["id"] for e in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 5 and seen == sorted(seen, reverse=True)
    bad = await client.get("/v1/admin/audit-log", params={"cursor": "x"}, headers=bearer(admin))
    assert_envelope(bad, 422, "validation_error")


async def test_request_id_is_echoed(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz", headers={"X-Request-ID": "abc123"})
    assert response.headers["x-request-id"] == "abc123"
    assert len((await client.get("/healthz")).headers["x-request-id"]) == 32


async def test_ops_endpoints(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).json()["status"] == "ready"
    await client.get("/v1/no-such-thing")
    metrics = (await client.get("/metrics")).text
    for name in (
        "scrm_http_requests_total",
        "scrm_http_request_duration_seconds_bucket",
        "scrm_queue_depth",
        "scrm_outbox_lag_seconds",
        "scrm_outbox_pending",
        "scrm_dlq_size",
    ):
        assert name in metrics, name
    assert 'route="unmatched"' in metrics


async def test_unexpected_failure_answers_500_envelope_with_request_id(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    app = client._transport.app  # type: ignore[attr-defined]

    @app.get("/v1/test-explodes")
    async def explodes() -> None:
        raise ZeroDivisionError("boom")

    response = await client.get("/v1/test-explodes", headers={"X-Request-ID": "req-500"})
    error = assert_envelope(response, 500, "internal_error")
    assert error["details"] == {"request_id": "req-500"}
    assert response.headers["x-request-id"] == "req-500"
    assert "boom" not in response.text, "internals are logged, not shown"
    assert any(r.exc_info and "boom" in str(r.exc_info[1]) for r in caplog.records)


async def test_each_request_is_logged_with_its_id(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    import json
    import logging

    from shared.observability import JsonFormatter

    with caplog.at_level(logging.INFO, logger="scrm.access"):
        await client.get("/healthz", headers={"X-Request-ID": "req-log"})
    [record] = [r for r in caplog.records if r.name == "scrm.access"]
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "GET /healthz 200" and line["route"] == "/healthz"
    assert line["status"] == 200 and line["ms"] >= 0 and line["level"] == "info"
