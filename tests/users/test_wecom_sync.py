"""WeCom API use: enrichment after callbacks (also when the API is down), and `scrm wecom sync`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import text

from services.users.settings import users_settings
from shared.runtime import Runtime
from tests.clock import wait_until
from tests.helpers import bearer, run_scrm
from tests.users.fake_wecom import FakeWeCom
from tests.users.support import CORP_ID, WeComTenant, contact_event, post, process_all, wecom_tenant

SECRET = "app-secret-for-tests"


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeWeCom]:
    async with FakeWeCom(corp_id=CORP_ID, secret=SECRET) as server:
        monkeypatch.setenv("SCRM_WECOM_API_BASE", server.base_url)
        monkeypatch.setenv("SCRM_WECOM_RETRY_BASE_SECONDS", "0.05")
        monkeypatch.setenv("SCRM_WECOM_RETRY_MAX_SECONDS", "0.2")
        users_settings.cache_clear()
        yield server
    users_settings.cache_clear()


@pytest.fixture
async def corp(committed: Runtime, fake: FakeWeCom) -> WeComTenant:
    return await wecom_tenant(committed, app_secret=SECRET)


async def contact_of(client: httpx.AsyncClient, corp: WeComTenant) -> dict[str, object]:
    [item] = (await client.get("/v1/contacts", headers=bearer(corp.admin))).json()["items"]
    detail: dict[str, object] = (
        await client.get(f"/v1/contacts/{item['id']}", headers=bearer(corp.admin))
    ).json()
    return detail


async def test_contact_exists_while_api_is_down_and_is_enriched_later(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant, fake: FakeWeCom
) -> None:
    fake.add_staff("zhangsan", "张三")
    fake.add_contact(
        "wmENRICH",
        "王小明",
        unionid="oUnionEnrich1",
        follow_users=[{"userid": "zhangsan", "remark": "VIP客户", "state": "live-1"}],
        corp_name="小明茶行",
    )
    fake.down = True
    await post(
        committed_client, corp.callback(contact_event("add_external_contact", external="wmENRICH"))
    )
    await process_all(committed)
    before = await contact_of(committed_client, corp)
    assert before["name"] is None and [i["kind"] for i in before["identities"]] == [
        "external_userid"
    ]
    async with committed.engine.connect() as conn:
        job = (
            await conn.execute(
                text("SELECT status, attempts FROM scheduled_jobs WHERE job = 'enrich_contact'")
            )
        ).one()
    assert job.status == "pending", "the enrichment waits for WeCom..."
    assert job.attempts == 0, "...without counting towards the dead-letter queue"

    await asyncio.sleep(0.3)  # several deferrals while WeCom is still down
    await process_all(committed)
    assert (await contact_of(committed_client, corp))["name"] is None
    fake.down = False

    async def enriched() -> bool:
        await process_all(committed)
        return bool((await contact_of(committed_client, corp))["name"])

    await wait_until(enriched, "the contact enriched once WeCom is back", every=0.1)
    after = await contact_of(committed_client, corp)
    assert after["name"] == "王小明" and after["corp_name"] == "小明茶行"
    assert sorted(i["kind"] for i in after["identities"]) == ["external_userid", "unionid"]
    assert after["follows"][0]["remark"] == "VIP客户"


async def test_wecom_sync_repairs_missed_callbacks_without_duplicates(
    committed: Runtime,
    committed_client: httpx.AsyncClient,
    corp: WeComTenant,
    fake: FakeWeCom,
    scrm_env: dict[str, str],
) -> None:
    fake.add_staff("zhangsan", "张三")
    fake.add_staff("lisi", "李四")
    for i in range(130):
        fake.add_contact(
            f"wmS{i:03d}", f"客户{i}", follow_users=[{"userid": "zhangsan" if i % 2 else "lisi"}]
        )
    fake.add_group(
        "wrG1",
        "VIP群",
        "zhangsan",
        members=[
            {"userid": "zhangsan", "type": 1},
            {"userid": "wmS001", "type": 2},
            {"userid": "wmS002", "type": 2},
        ],
    )
    # One contact already known from a callback: sync must not duplicate it.
    await post(
        committed_client,
        corp.callback(contact_event("add_external_contact", user="zhangsan", external="wmS001")),
    )
    await process_all(committed)
    env = {**scrm_env, "SCRM_WECOM_API_BASE": fake.base_url}
    for _ in range(2):
        result = await run_scrm(env, "wecom", "sync", "--tenant", corp.slug)
        assert result.returncode == 0, result.stderr
        assert "130 contact follow(s), 1 group(s)" in result.stdout
    async with committed.engine.connect() as conn:
        counts = (
            await conn.execute(
                text(
                    "SELECT (SELECT count(*) FROM contacts),"
                    " (SELECT count(*) FROM contact_identities),"
                    " (SELECT count(*) FROM contact_follows), (SELECT count(*) FROM staff),"
                    " (SELECT count(*) FROM group_members WHERE left_at IS NULL)"
                )
            )
        ).one()
    assert tuple(counts) == (130, 130, 130, 2, 3)
    named = (
        await committed_client.get(
            "/v1/contacts", params={"q": "客户12"}, headers=bearer(corp.admin)
        )
    ).json()
    assert {c["name"] for c in named["items"]} >= {"客户12", "客户120"}
    staff = (await committed_client.get("/v1/staff", headers=bearer(corp.admin))).json()
    assert [m["userid"] for m in staff] == ["lisi", "zhangsan"]
    groups = (await committed_client.get("/v1/groups", headers=bearer(corp.admin))).json()
    assert [g["chat_id"] for g in groups["items"]] == ["wrG1"] and groups["next_cursor"] is None
    group = (await committed_client.get("/v1/groups/wrG1", headers=bearer(corp.admin))).json()
    assert group["name"] == "VIP群" and group["member_count"] == 3
    members = group["members"]
    assert [m["staff_userid"] for m in members if m["member_type"] == 1] == ["zhangsan"]
    contact_members = [m["contact_id"] for m in members if m["member_type"] == 2]
    assert len(contact_members) == 2 and all(contact_members)
    assert "wmS001" not in str(group), "external ids never appear in responses"
    missing = await committed_client.get("/v1/groups/nope", headers=bearer(corp.admin))
    assert missing.status_code == 404
    no_secret = await run_scrm(env, "wecom", "sync", "--tenant", "nope")
    assert no_secret.returncode != 0 and "no tenant" in no_secret.stderr
