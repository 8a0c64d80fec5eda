"""The `scrm` command line and the settings it starts from."""

from __future__ import annotations

import stat
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from shared.config import Settings, SettingsError, load_settings, secret_key, sqlalchemy_url
from shared.db import unit_of_work
from shared.runtime import Runtime
from tests.helpers import bearer, make_tenant, run_scrm


async def test_tenant_and_key_commands_print_the_result_last(
    committed: Runtime, committed_client: httpx.AsyncClient, scrm_env: dict[str, str]
) -> None:
    created = await run_scrm(
        scrm_env, "tenant", "create", "cli-brand", "--name", "CLI Brand", "--timezone", "Asia/Tokyo"
    )
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip().splitlines()[-1] == "cli-brand"

    key = await run_scrm(
        scrm_env, "apikey", "create", "--tenant", "cli-brand", "--role", "operator"
    )
    assert key.returncode == 0, key.stderr
    plaintext = key.stdout.strip().splitlines()[-1]
    me = (await committed_client.get("/v1/me", headers=bearer(plaintext))).json()
    assert me["role"] == "operator"
    assert me["tenant"]["slug"] == "cli-brand" and me["tenant"]["timezone"] == "Asia/Tokyo"

    dup = await run_scrm(scrm_env, "tenant", "create", "cli-brand")
    assert dup.returncode != 0 and "already exists" in dup.stderr
    unknown = await run_scrm(scrm_env, "apikey", "create", "--tenant", "nope", "--role", "admin")
    assert unknown.returncode != 0 and "no tenant 'nope'" in unknown.stderr
    no_tenant = await run_scrm(scrm_env, "apikey", "create", "--role", "admin")
    assert no_tenant.returncode != 0 and "--tenant" in no_tenant.stderr
    bad_slug = await run_scrm(scrm_env, "tenant", "create", "Not A Slug")
    assert bad_slug.returncode != 0 and "invalid tenant slug" in bad_slug.stderr

    platform = await run_scrm(scrm_env, "apikey", "create", "--role", "platform")
    async with committed.engine.connect() as conn:
        audited = (
            await conn.execute(text("SELECT actor, action, target FROM audit_log ORDER BY id"))
        ).all()
    assert [a[1] for a in audited] == [
        "scrm tenant create",
        "scrm apikey create",
        "scrm apikey create",
    ], "failed commands leave no audit entry"
    assert all(a[0].startswith("cli:") for a in audited)
    assert audited[1][2]["role"] == "operator"
    listed = await committed_client.get(
        "/v1/admin/tenants", headers=bearer(platform.stdout.strip().splitlines()[-1])
    )
    assert [t["slug"] for t in listed.json()] == ["cli-brand"]


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("DATABASE_URL", "mysql://root@localhost/db", "DATABASE_URL"),
        ("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432", "DATABASE_URL"),
        ("REDIS_URL", "http://localhost:6379", "REDIS_URL"),
        ("REDIS_URL", "redis://localhost:6379/zero", "REDIS_URL"),
        ("PORT", "eighty", "PORT"),
        ("PORT", "70000", "PORT"),
        ("SCRM_SECRET_KEY", "short", "SCRM_SECRET_KEY"),
        ("SCRM_LOG_LEVEL", "LOUD", "SCRM_LOG_LEVEL"),
    ],
)
async def test_invalid_settings_fail_at_start_naming_the_setting(
    scrm_env: dict[str, str], name: str, value: str, expected: str
) -> None:
    result = await run_scrm({**scrm_env, name: value}, "tenant", "list")
    assert result.returncode != 0
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    if name == "SCRM_SECRET_KEY":
        assert value not in result.stderr, "secrets are never echoed"


def test_database_url_accepts_the_usual_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    for url in (
        "postgresql://u@h:5432/db",
        "postgres://u@h:5432/db",
        "postgresql+asyncpg://u@h:5432/db",
    ):
        monkeypatch.setenv("DATABASE_URL", url)
        settings = load_settings()
        assert settings.database_url == url
        assert sqlalchemy_url(url) == "postgresql+asyncpg://u@h:5432/db"
    monkeypatch.setenv("DATABASE_URL", "sqlite:///x.db")
    with pytest.raises(SettingsError, match="DATABASE_URL"):
        load_settings()


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "REDIS_URL", "PORT", "HOST", "SCRM_DATA_DIR", "SCRM_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir("/")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.data_dir == Path(".scrm") and settings.embedded


def test_secret_key_is_generated_once_and_kept_private(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", secret_key=None)
    first = secret_key(settings)
    assert len(first) >= 32 and secret_key(settings) == first
    path = tmp_path / "data" / "secret_key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert secret_key(Settings(data_dir=tmp_path / "data", secret_key="y" * 40)) == b"y" * 40


async def test_webhook_secret_list_and_revoke(committed: Runtime, scrm_env: dict[str, str]) -> None:
    async with unit_of_work(committed.sessionmaker) as session:
        tenant = await make_tenant(session)
        other = await make_tenant(session)
    ids, values = [], []
    for _ in range(2):
        created = await run_scrm(scrm_env, "webhook-secret", "create", "--tenant", tenant.slug)
        assert created.returncode == 0, created.stderr
        ids.append(created.stderr.split()[3])
        values.append(created.stdout.strip())

    listed = await run_scrm(scrm_env, "webhook-secret", "list", "--tenant", tenant.slug)
    assert listed.returncode == 0, listed.stderr
    rows = [line.split("\t") for line in listed.stdout.splitlines()]
    assert [(r[0], r[2]) for r in rows] == [(ids[1], "active"), (ids[0], "active")]
    assert not any(value in listed.stdout for value in values), "never the secret itself"

    revoked = await run_scrm(scrm_env, "webhook-secret", "revoke", "--tenant", tenant.slug, ids[1])
    assert revoked.returncode == 0, revoked.stderr
    assert revoked.stdout.startswith(f"revoked webhook secret {ids[1]} at ")
    listed = await run_scrm(scrm_env, "webhook-secret", "list", "--tenant", tenant.slug)
    states = [line.split("\t")[2] for line in listed.stdout.splitlines()]
    assert states[0].startswith("revoked ") and states[1] == "active"

    elsewhere = await run_scrm(scrm_env, "webhook-secret", "revoke", "--tenant", other.slug, ids[0])
    assert elsewhere.returncode == 1 and "no such webhook secret" in elsewhere.stderr
    async with committed.engine.connect() as conn:
        still_active = await conn.scalar(
            text("SELECT revoked_at IS NULL FROM webhook_secrets WHERE id = :id"), {"id": ids[0]}
        )
        audited = (
            await conn.execute(
                text("SELECT action, target FROM audit_log WHERE tenant_id = :t ORDER BY id"),
                {"t": tenant.id},
            )
        ).all()
    assert still_active, "another tenant's key cannot revoke it"
    assert [a[0] for a in audited] == [
        "scrm webhook-secret create",
        "scrm webhook-secret create",
        "scrm webhook-secret revoke",
    ]
    assert audited[2][1] == {"secret_id": ids[1]}
