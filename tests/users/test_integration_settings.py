"""WeCom settings and webhook secrets through the admin API and the CLI."""

from __future__ import annotations

import httpx
from sqlalchemy import text

from services.users.wecom_crypto import WeComCrypto
from shared.db import unit_of_work
from shared.runtime import Runtime
from tests.helpers import bearer, make_key, make_tenant, run_scrm
from tests.users.support import AES_KEY, CORP_ID, TOKEN, WeComTenant, contact_event, post


async def test_admin_api_sets_wecom_settings_encrypted(
    committed: Runtime, committed_client: httpx.AsyncClient
) -> None:
    async with unit_of_work(committed.sessionmaker) as session:
        tenant = await make_tenant(session, "tea-house")
        admin = await make_key(session, tenant, "admin")
        operator = await make_key(session, tenant, "operator")
    body = {"corp_id": CORP_ID, "token": TOKEN, "encoding_aes_key": AES_KEY, "secret": "s3cret"}
    assert (
        await committed_client.get("/v1/users/wecom-settings", headers=bearer(admin))
    ).status_code == 404
    forbidden = await committed_client.put(
        "/v1/users/wecom-settings", json=body, headers=bearer(operator)
    )
    assert forbidden.status_code == 403
    for bad in (
        {**body, "encoding_aes_key": "short"},
        {**body, "token": "has space"},
        {**body, "encoding_aes_key": "!" * 43},
    ):
        response = await committed_client.put(
            "/v1/users/wecom-settings", json=bad, headers=bearer(admin)
        )
        assert response.status_code == 422, response.text
    saved = await committed_client.put("/v1/users/wecom-settings", json=body, headers=bearer(admin))
    assert saved.status_code == 200
    assert saved.json()["corp_id"] == CORP_ID and saved.json()["has_secret"] is True
    assert saved.json()["callback_path"] == "/v1/wecom/tea-house/callback"
    assert "token" not in saved.json() and "secret" not in saved.json()
    async with committed.engine.connect() as conn:
        stored = (await conn.execute(text("SELECT t::text FROM wecom_settings t"))).scalar()
    assert TOKEN not in stored and AES_KEY not in stored and "s3cret" not in stored
    # The callback now verifies with these settings.
    corp = WeComTenant(tenant.id, "tea-house", admin, WeComCrypto(TOKEN, AES_KEY, CORP_ID), "")
    accepted = await post(committed_client, corp.callback(contact_event("add_external_contact")))
    assert accepted.text == "success"
    audited = await committed_client.get("/v1/admin/audit-log", headers=bearer(admin))
    assert audited.json()["items"][0]["action"] == "PUT /v1/users/wecom-settings"


async def test_cli_tenant_create_with_wecom_and_webhook_secret(
    committed: Runtime, committed_client: httpx.AsyncClient, scrm_env: dict[str, str]
) -> None:
    created = await run_scrm(
        scrm_env,
        "tenant",
        "create",
        "cli-corp",
        "--wecom-corp-id",
        CORP_ID,
        "--wecom-token",
        TOKEN,
        "--wecom-aes-key",
        AES_KEY,
        "--wecom-secret",
        "app-secret",
    )
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip().splitlines()[-1] == "cli-corp"
    secret = await run_scrm(scrm_env, "webhook-secret", "create", "--tenant", "cli-corp")
    assert secret.returncode == 0, secret.stderr
    value = secret.stdout.strip().splitlines()[-1]
    assert value.startswith("whsec_")
    crypto = WeComCrypto(TOKEN, AES_KEY, CORP_ID)
    async with committed.engine.connect() as conn:
        tenant_id = await conn.scalar(text("SELECT id FROM tenants WHERE slug = 'cli-corp'"))
    corp = WeComTenant(tenant_id, "cli-corp", "", crypto, value)
    assert (
        await post(committed_client, corp.callback(contact_event("add_external_contact")))
    ).text == "success"
    webhook = corp.signed(
        {
            "event_id": "w1",
            "type": "checkin",
            "occurred_at": "2026-11-20T10:00:00Z",
            "contact": {"openid": "oOpen1"},
        }
    )
    assert (await post(committed_client, webhook)).status_code == 202
    partial = await run_scrm(scrm_env, "tenant", "create", "half", "--wecom-corp-id", CORP_ID)
    assert partial.returncode != 0 and "go together" in partial.stderr
    bad_key = await run_scrm(
        scrm_env,
        "tenant",
        "create",
        "badkey",
        "--wecom-corp-id",
        CORP_ID,
        "--wecom-token",
        TOKEN,
        "--wecom-aes-key",
        "tooshort",
    )
    assert bad_key.returncode != 0 and "EncodingAESKey" in bad_key.stderr
    async with committed.engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM tenants WHERE slug = 'badkey'")) == 0
