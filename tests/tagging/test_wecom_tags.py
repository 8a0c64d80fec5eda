"""The WeCom corp-tag mirror against the fake WeCom server: syncs that keep local ids,
every change_external_tag callback, a customer's tags after edit_external_contact,
mark_tag for tags made here (never more than 5 calls in flight), retries, failures
and names of at most 30 characters."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from services.tagging import clock
from services.tagging.wecom import ops_repository
from services.tagging.wecom.queue import WeComTagQueue
from services.tagging.wecom.settings import wecom_tag_settings
from services.users.settings import users_settings
from shared.db import unit_of_work
from shared.models import Tenant
from shared.runtime import Runtime
from tests.helpers import bearer, make_key
from tests.shared.bus_support import relay_all, work_until_idle
from tests.users.fake_wecom import FakeWeCom
from tests.users.support import (
    CORP_ID,
    WeComTenant,
    contact_event,
    post,
    process_all,
    wecom_tenant,
)

SECRET = "app-secret-for-tag-tests"


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeWeCom]:
    async with FakeWeCom(corp_id=CORP_ID, secret=SECRET) as server:
        monkeypatch.setenv("SCRM_WECOM_API_BASE", server.base_url)
        monkeypatch.setenv("SCRM_WECOM_RETRY_BASE_SECONDS", "0.05")
        monkeypatch.setenv("SCRM_WECOM_RETRY_MAX_SECONDS", "0.2")
        monkeypatch.setenv("SCRM_TAGGING_WECOM_MAX_ATTEMPTS", "3")
        users_settings.cache_clear()
        wecom_tag_settings.cache_clear()
        yield server
    users_settings.cache_clear()
    wecom_tag_settings.cache_clear()


@pytest.fixture
async def corp(committed: Runtime, fake: FakeWeCom) -> WeComTenant:
    return await wecom_tenant(committed, app_secret=SECRET)


def later(seconds: float) -> Any:
    """A clock `seconds` ahead of now (for retries that fall due)."""
    return lambda: datetime.now(UTC) + timedelta(seconds=seconds)


async def settle(runtime: Runtime, rounds: int = 3) -> None:
    """Callbacks applied, events delivered, the WeCom queue drained, until quiet."""
    for _ in range(rounds):
        await process_all(runtime)
        await relay_all(runtime)
        await work_until_idle(runtime, "tagging")
    await WeComTagQueue(runtime).drain()


def tag_callback(change: str, wecom_id: str, tag_type: str = "tag") -> str:
    fields = {
        "ToUserName": CORP_ID,
        "FromUserName": "sys",
        "CreateTime": "1700000000",
        "MsgType": "event",
        "Event": "change_external_tag",
        "Id": wecom_id,
        "TagType": tag_type,
        "ChangeType": change,
    }
    return "<xml>" + "".join(f"<{k}><![CDATA[{v}]]></{k}>" for k, v in fields.items()) + "</xml>"


async def callback(client: httpx.AsyncClient, corp: WeComTenant, xml: str) -> None:
    response = await post(client, corp.callback(xml, nonce=uuid.uuid4().hex[:10]))
    assert response.status_code == 200, response.text


async def rows(runtime: Runtime, sql: str, **params: Any) -> list[dict[str, Any]]:
    async with runtime.engine.connect() as conn:
        return [dict(r._mapping) for r in await conn.execute(text(sql), params)]


async def local_tags(runtime: Runtime, corp: WeComTenant) -> dict[str, dict[str, Any]]:
    found = await rows(
        runtime,
        "SELECT t.id, t.name, t.wecom_tag_id, g.id AS group_id, g.name AS group_name,"
        " g.wecom_group_id FROM tags t JOIN tag_groups g ON g.id = t.group_id"
        " WHERE t.tenant_id = :t",
        t=corp.tenant_id,
    )
    return {f"{r['group_name']}/{r['name']}": r for r in found}


async def local_groups(runtime: Runtime, corp: WeComTenant) -> dict[str, dict[str, Any]]:
    found = await rows(
        runtime,
        "SELECT id, name, wecom_group_id, mirror_to_wecom FROM tag_groups WHERE tenant_id = :t",
        t=corp.tenant_id,
    )
    return {r["name"]: r for r in found}


async def ops(runtime: Runtime, corp: WeComTenant, kind: str | None = None) -> list[dict[str, Any]]:
    return await rows(
        runtime,
        "SELECT id, kind, status, attempts, payload, last_error, result FROM wecom_tag_ops"
        " WHERE tenant_id = :t AND (CAST(:k AS text) IS NULL OR kind = :k) ORDER BY id",
        t=corp.tenant_id,
        k=kind,
    )


async def sync(client: httpx.AsyncClient, runtime: Runtime, corp: WeComTenant) -> dict[str, Any]:
    response = await client.post("/v1/wecom/tags/sync", headers=bearer(corp.admin))
    assert response.status_code == 202, response.text
    op_id = response.json()["id"]
    await settle(runtime)
    done = await client.get(f"/v1/wecom/tags/ops/{op_id}", headers=bearer(corp.admin))
    assert done.status_code == 200
    body: dict[str, Any] = done.json()
    assert body["status"] == "done", body
    return body


async def add_contact(
    client: httpx.AsyncClient,
    runtime: Runtime,
    corp: WeComTenant,
    fake: FakeWeCom,
    external: str,
    staff: str = "zhangsan",
) -> uuid.UUID:
    """A WeCom customer followed by `staff`, known to users and the tagging read model."""
    fake.add_contact(external, f"客户{external}", follow_users=[{"userid": staff}])
    await callback(
        client, corp, contact_event("add_external_contact", user=staff, external=external)
    )
    await process_all(runtime)
    found = await client.get(
        "/v1/contacts", params={"external_userid": external}, headers=bearer(corp.admin)
    )
    [item] = found.json()["items"]
    contact_id = uuid.UUID(item["id"])
    async with runtime.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO tagging_profiles (tenant_id, contact_id, owner_staff)"
                " VALUES (:t, :c, :o) ON CONFLICT DO NOTHING"
            ),
            {"t": corp.tenant_id, "c": contact_id, "o": staff},
        )
    return contact_id


# --- syncs ---------------------------------------------------------------------------------


async def test_initial_sync_mirrors_corp_tags_and_a_resync_keeps_local_ids(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant, fake: FakeWeCom
) -> None:
    fake.add_corp_tag_group("客户等级", ["VIP", "普通"], order=5)
    fake.add_corp_tag_group("兴趣", ["茶", "咖啡"], order=1)

    first = await sync(committed_client, committed, corp)
    assert first["result"]["groups_created"] == 2
    assert first["result"]["tags_created"] == 4
    tags = await local_tags(committed, corp)
    assert set(tags) == {"客户等级/VIP", "客户等级/普通", "兴趣/茶", "兴趣/咖啡"}
    assert tags["客户等级/VIP"]["wecom_tag_id"] == fake.corp_tag_id("客户等级", "VIP")
    groups = await local_groups(committed, corp)
    assert all(g["mirror_to_wecom"] for g in groups.values())

    # Changed in WeCom's console (no callback): renamed, deleted, added.
    fake.edit_corp_tag_in_console(fake.corp_tag_id("客户等级", "VIP"), name="VIP会员")
    fake.edit_corp_tag_in_console(fake.corp_tag_id("兴趣"), name="兴趣偏好")
    fake.delete_corp_tag_in_console(fake.corp_tag_id("客户等级", "普通"))
    new_group = fake.add_corp_tag_group("渠道", ["直播"])

    second = await sync(committed_client, committed, corp)
    assert second["result"]["tags_renamed"] == 1
    assert second["result"]["groups_renamed"] == 1
    assert second["result"]["tags_removed"] == 1
    assert second["result"]["tags_created"] == 1
    after = await local_tags(committed, corp)
    assert set(after) == {"客户等级/VIP会员", "兴趣偏好/茶", "兴趣偏好/咖啡", "渠道/直播"}
    assert after["客户等级/VIP会员"]["id"] == tags["客户等级/VIP"]["id"], "renamed, not recreated"
    assert after["兴趣偏好/茶"]["id"] == tags["兴趣/茶"]["id"]
    assert after["兴趣偏好/茶"]["group_id"] == tags["兴趣/茶"]["group_id"]
    assert after["渠道/直播"]["wecom_group_id"] == new_group["group_id"]

    third = await sync(committed_client, committed, corp)
    assert third["result"]["tags_created"] == third["result"]["groups_created"] == 0
    assert await local_tags(committed, corp) == after, "a sync of nothing new changes nothing"
    # Nothing made locally by the syncs went back to WeCom.
    assert fake.calls["/cgi-bin/externalcontact/add_corp_tag"] == 0
    assert fake.calls["/cgi-bin/externalcontact/edit_corp_tag"] == 0
    assert fake.calls["/cgi-bin/externalcontact/del_corp_tag"] == 0

    listed = await committed_client.get("/v1/wecom/tags", headers=bearer(corp.admin))
    assert listed.status_code == 200
    names = [g["name"] for g in listed.json()["groups"]]
    assert names[0] == "客户等级", "larger order first, as WeCom shows them"
    assert set(names) == {"客户等级", "兴趣偏好", "渠道"}


async def test_a_sync_links_local_tags_of_the_same_name_and_pushes_the_others(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant, fake: FakeWeCom
) -> None:
    headers = bearer(corp.admin)
    created = await committed_client.post(
        "/v1/tag-groups", json={"name": "兴趣", "half_life_days": 30, "floor": 1}, headers=headers
    )
    assert created.status_code == 201, created.text
    group_id = created.json()["id"]
    tea = await committed_client.post(
        "/v1/tags", json={"group_id": group_id, "name": "茶"}, headers=headers
    )
    wine = await committed_client.post(
        "/v1/tags", json={"group_id": group_id, "name": "酒"}, headers=headers
    )
    assert tea.status_code == wine.status_code == 201
    fake.add_corp_tag_group("兴趣", ["茶", "咖啡"])

    result = (await sync(committed_client, committed, corp))["result"]
    assert result["groups_linked"] == 1 and result["tags_linked"] == 1
    assert result["tags_created"] == 1
    await settle(committed)
    tags = await local_tags(committed, corp)
    assert tags["兴趣/茶"]["id"] == tea.json()["id"]
    assert tags["兴趣/茶"]["wecom_tag_id"] == fake.corp_tag_id("兴趣", "茶")
    # The local-only tag went to WeCom, in the linked group.
    assert tags["兴趣/酒"]["wecom_tag_id"] == fake.corp_tag_id("兴趣", "酒")
    assert set(tags) == {"兴趣/茶", "兴趣/咖啡", "兴趣/酒"}


# --- callbacks -------------------------------------------------------------------------------


async def test_change_external_tag_callbacks_apply_incrementally(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant, fake: FakeWeCom
) -> None:
    fake.add_corp_tag_group("客户等级", ["VIP", "普通"], order=2, tag_orders=[2, 1])
    fake.add_corp_tag_group("兴趣", ["茶"], order=1)
    await sync(committed_client, committed, corp)
    before = await local_tags(committed, corp)
    lists_before = fake.calls["/cgi-bin/externalcontact/get_corp_tag_list"]

    # create tag: fetched by its id alone
    grade = fake.corp_tag_id("客户等级")
    body = fake.add_corp_tag_in_console(grade, "SVIP")
    await callback(committed_client, corp, tag_callback("create", body))
    # create tag_group
    group = fake.add_corp_tag_group("渠道", ["直播", "门店"])
    await callback(committed_client, corp, tag_callback("create", group["group_id"], "tag_group"))
    await settle(committed)
    tags = await local_tags(committed, corp)
    assert {"客户等级/SVIP", "渠道/直播", "渠道/门店"} <= set(tags)
    fetches = await ops(committed, corp, "fetch")
    assert [o["payload"] for o in fetches] == [
        {"tag_ids": [body]},
        {"group_ids": [group["group_id"]]},
    ]
    assert fake.calls["/cgi-bin/externalcontact/get_corp_tag_list"] == lists_before + 2

    # update tag and tag_group
    fake.edit_corp_tag_in_console(fake.corp_tag_id("客户等级", "VIP"), name="VIP会员")
    await callback(
        committed_client, corp, tag_callback("update", fake.corp_tag_id("客户等级", "VIP会员"))
    )
    fake.edit_corp_tag_in_console(fake.corp_tag_id("兴趣"), name="爱好")
    await callback(
        committed_client, corp, tag_callback("update", fake.corp_tag_id("爱好"), "tag_group")
    )
    await settle(committed)
    tags = await local_tags(committed, corp)
    assert tags["客户等级/VIP会员"]["id"] == before["客户等级/VIP"]["id"]
    assert tags["爱好/茶"]["id"] == before["兴趣/茶"]["id"]

    # shuffle within a group, and of the groups (empty Id)
    fake.edit_corp_tag_in_console(fake.corp_tag_id("客户等级", "普通"), order=9)
    await callback(committed_client, corp, tag_callback("shuffle", grade))
    await settle(committed)
    listed = (await committed_client.get("/v1/wecom/tags", headers=bearer(corp.admin))).json()
    grade_tags = next(g for g in listed["groups"] if g["wecom_id"] == grade)["tags"]
    assert grade_tags[0]["name"] == "普通", "reordered"
    fake.edit_corp_tag_in_console(fake.corp_tag_id("爱好"), order=50)
    await callback(committed_client, corp, tag_callback("shuffle", "", "tag_group"))
    await settle(committed)
    listed = (await committed_client.get("/v1/wecom/tags", headers=bearer(corp.admin))).json()
    assert listed["groups"][0]["name"] == "爱好"
    orders = await ops(committed, corp, "order")
    assert [o["payload"] for o in orders] == [{"group_ids": [grade]}, {"group_ids": []}]

    # delete tag (its contact tags go, reason wecom) and tag_group: no call at all
    contact = await add_contact(committed_client, committed, corp, fake, "wmDEL")
    vip = tags["客户等级/VIP会员"]["id"]
    tagged = await committed_client.post(
        f"/v1/contacts/{contact}/tags", json={"tag_id": vip}, headers=bearer(corp.admin)
    )
    assert tagged.status_code == 201, tagged.text
    await settle(committed)
    calls_before = sum(fake.calls.values())
    vip_wecom = fake.corp_tag_id("客户等级", "VIP会员")
    fake.delete_corp_tag_in_console(vip_wecom)
    await callback(committed_client, corp, tag_callback("delete", vip_wecom))
    channel = fake.corp_tag_id("渠道")
    fake.delete_corp_tag_in_console(channel)
    await callback(committed_client, corp, tag_callback("delete", channel, "tag_group"))
    await settle(committed)
    tags = await local_tags(committed, corp)
    assert "客户等级/VIP会员" not in tags
    assert not any(name.startswith("渠道/") for name in tags)
    assert "渠道" not in await local_groups(committed, corp)
    removed = await rows(
        committed,
        "SELECT payload FROM outbox_events WHERE type = 'tag.removed' AND tenant_id = :t",
        t=corp.tenant_id,
    )
    assert [r["payload"]["reason"] for r in removed] == ["wecom"]
    assert sum(fake.calls.values()) - calls_before <= 1, "deletes need no WeCom call"
    assert fake.calls["/cgi-bin/externalcontact/del_corp_tag"] == 0, "nothing deleted back"


async def test_edit_external_contact_refetches_the_customers_corp_tags(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant, fake: FakeWeCom
) -> None:
    fake.add_staff("zhangsan", "张三")
    fake.add_corp_tag_group("客户等级", ["VIP", "普通"])
    await sync(committed_client, committed, corp)
    contact = await add_contact(committed_client, committed, corp, fake, "wmEDIT")
    tags = await local_tags(committed, corp)
    vip, normal = tags["客户等级/VIP"], tags["客户等级/普通"]

    fake.mark_in_console("wmEDIT", "zhangsan", {vip["wecom_tag_id"]})
    await callback(
        committed_client, corp, contact_event("edit_external_contact", external="wmEDIT")
    )
    await settle(committed)
    held = await rows(
        committed,
        "SELECT tag_id, source FROM contact_tags WHERE contact_id = :c",
        c=contact,
    )
    assert held == [{"tag_id": vip["id"], "source": "wecom"}]
    assert [o["status"] for o in await ops(committed, corp, "refetch")] == ["done"]
    assert fake.mark_tag_requests == [], "tags that came from WeCom are not marked back"

    fake.mark_in_console("wmEDIT", "zhangsan", {normal["wecom_tag_id"]})
    await callback(
        committed_client,
        corp,
        contact_event("edit_external_contact", external="wmEDIT", at=1700000100),
    )
    await settle(committed)
    held = await rows(committed, "SELECT tag_id FROM contact_tags WHERE contact_id = :c", c=contact)
    assert held == [{"tag_id": normal["id"]}]
    removed = await rows(
        committed,
        "SELECT payload FROM outbox_events WHERE type = 'tag.removed' AND tenant_id = :t",
        t=corp.tenant_id,
    )
    assert [r["payload"]["reason"] for r in removed] == ["wecom"]
    assert fake.mark_tag_requests == []


# --- mark_tag and the concurrency limit -------------------------------------------------


async def _mirrored_tag(
    client: httpx.AsyncClient, runtime: Runtime, corp: WeComTenant, fake: FakeWeCom
) -> dict[str, Any]:
    fake.add_corp_tag_group("兴趣", ["茶"])
    await sync(client, runtime, corp)
    return (await local_tags(runtime, corp))["兴趣/茶"]


async def test_tags_added_and_removed_here_are_marked_in_wecom_at_most_5_calls_at_once(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant, fake: FakeWeCom
) -> None:
    tea = await _mirrored_tag(committed_client, committed, corp, fake)
    contacts = {
        f"wmM{i:02d}": await add_contact(committed_client, committed, corp, fake, f"wmM{i:02d}")
        for i in range(12)
    }
    fake.tag_call_delay = 0.2  # calls overlap as much as the queue lets them
    bulk = await committed_client.post(
        f"/v1/tags/{tea['id']}/contacts",
        json={"contact_ids": [str(c) for c in contacts.values()]},
        headers=bearer(corp.admin),
    )
    assert bulk.status_code == 200, bulk.text
    await settle(committed)
    assert all(fake.contact_corp_tags(e) == {tea["wecom_tag_id"]} for e in contacts)
    assert fake.peak_tag_calls == 5, "five at once, never more"
    assert len(fake.mark_tag_requests) == 12
    assert {r["userid"] for r in fake.mark_tag_requests} == {"zhangsan"}

    fake.peak_tag_calls = 0
    removed = await committed_client.post(
        f"/v1/tags/{tea['id']}/contacts/remove",
        json={"contact_ids": [str(c) for c in contacts.values()]},
        headers=bearer(corp.admin),
    )
    assert removed.status_code == 200, removed.text
    await settle(committed)
    assert all(fake.contact_corp_tags(e) == set() for e in contacts)
    assert 1 < fake.peak_tag_calls <= 5
    assert all(o["status"] == "done" for o in await ops(committed, corp, "mark"))


async def test_two_workers_together_stay_within_5_calls(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant, fake: FakeWeCom
) -> None:
    tea = await _mirrored_tag(committed_client, committed, corp, fake)
    contacts = [
        await add_contact(committed_client, committed, corp, fake, f"wmW{i:02d}") for i in range(10)
    ]
    fake.tag_call_delay = 0.1
    await committed_client.post(
        f"/v1/tags/{tea['id']}/contacts",
        json={"contact_ids": [str(c) for c in contacts]},
        headers=bearer(corp.admin),
    )
    for _ in range(2):
        await relay_all(committed)
        await work_until_idle(committed, "tagging")  # handlers enqueue (and a first drain)
    fake.peak_tag_calls = 0
    # Two worker processes' queues at once (each with its own semaphore): the claim's
    # count of in-flight ops is what holds the line.
    await asyncio.gather(WeComTagQueue(committed).drain(), WeComTagQueue(committed).drain())
    await WeComTagQueue(committed).drain()
    assert fake.peak_tag_calls <= 5
    assert len({r["external_userid"] for r in fake.mark_tag_requests}) == 10


async def test_mark_retries_after_45033_and_after_wecom_was_down(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant, fake: FakeWeCom
) -> None:
    tea = await _mirrored_tag(committed_client, committed, corp, fake)
    contact = await add_contact(committed_client, committed, corp, fake, "wmRETRY")
    fake.busy(1)
    await committed_client.post(
        f"/v1/contacts/{contact}/tags", json={"tag_id": tea["id"]}, headers=bearer(corp.admin)
    )
    await settle(committed)
    [mark] = await ops(committed, corp, "mark")
    assert mark["status"] == "pending" and mark["attempts"] == 1
    assert "45033" in mark["last_error"]
    assert fake.contact_corp_tags("wmRETRY") == set()

    fake.down = True
    with clock.use(later(10)):
        await WeComTagQueue(committed).drain()
    [mark] = await ops(committed, corp, "mark")
    assert mark["status"] == "pending" and mark["attempts"] == 2
    fake.down = False
    with clock.use(later(15)):
        await WeComTagQueue(committed).drain()
    [mark] = await ops(committed, corp, "mark")
    assert mark["status"] == "pending", "its second backoff (8 s after 10 s) is not over yet"
    with clock.use(later(40)):
        await WeComTagQueue(committed).drain()
    [mark] = await ops(committed, corp, "mark")
    assert mark["status"] == "done" and mark["attempts"] == 3
    assert fake.contact_corp_tags("wmRETRY") == {tea["wecom_tag_id"]}


async def test_an_op_that_keeps_failing_is_listed_as_failed_and_can_be_retried(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant, fake: FakeWeCom
) -> None:
    fake.add_corp_tag_group("兴趣", ["茶"])
    fake.down = True
    response = await committed_client.post("/v1/wecom/tags/sync", headers=bearer(corp.admin))
    op_id = response.json()["id"]
    again = await committed_client.post("/v1/wecom/tags/sync", headers=bearer(corp.admin))
    assert again.json()["id"] == op_id, "a waiting sync is not queued twice"
    for seconds in (0, 100, 1000):  # SCRM_TAGGING_WECOM_MAX_ATTEMPTS=3
        with clock.use(later(seconds)):
            await WeComTagQueue(committed).drain()
    failed = await committed_client.get(
        "/v1/wecom/tags/ops", params={"status": "failed"}, headers=bearer(corp.admin)
    )
    assert failed.status_code == 200
    [item] = failed.json()["items"]
    assert item["id"] == op_id and item["attempts"] == 3 and "503" in item["last_error"]
    analyst_view = await committed_client.get("/v1/wecom/tags/ops", headers=bearer(corp.admin))
    assert analyst_view.status_code == 200

    fake.down = False
    retried = await committed_client.post(
        f"/v1/wecom/tags/ops/{op_id}/retry", headers=bearer(corp.admin)
    )
    assert retried.status_code == 200 and retried.json()["status"] == "pending"
    await WeComTagQueue(committed).drain()
    done = (
        await committed_client.get(f"/v1/wecom/tags/ops/{op_id}", headers=bearer(corp.admin))
    ).json()
    assert done["status"] == "done" and done["result"]["tags_created"] == 1
    not_failed = await committed_client.post(
        f"/v1/wecom/tags/ops/{op_id}/retry", headers=bearer(corp.admin)
    )
    assert not_failed.status_code == 409
    assert not_failed.json()["error"]["code"] == "op_not_failed"
    missing = await committed_client.get("/v1/wecom/tags/ops/999999", headers=bearer(corp.admin))
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    bad = await committed_client.get(
        "/v1/wecom/tags/ops", params={"status": "lost"}, headers=bearer(corp.admin)
    )
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "validation_error"


# --- definitions made here --------------------------------------------------------------------


async def test_tags_made_renamed_and_deleted_here_go_to_wecom(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant, fake: FakeWeCom
) -> None:
    headers = bearer(corp.admin)
    group = await committed_client.post(
        "/v1/tag-groups",
        json={"name": "会员", "half_life_days": None, "floor": 0, "mirror_to_wecom": True},
        headers=headers,
    )
    assert group.status_code == 201, group.text
    group_id = group.json()["id"]
    gold = await committed_client.post(
        "/v1/tags", json={"group_id": group_id, "name": "金卡"}, headers=headers
    )
    silver = await committed_client.post(
        "/v1/tags", json={"group_id": group_id, "name": "银卡"}, headers=headers
    )
    assert gold.status_code == silver.status_code == 201
    contact = await add_contact(committed_client, committed, corp, fake, "wmDEF")
    tagged = await committed_client.post(
        f"/v1/contacts/{contact}/tags", json={"tag_id": gold.json()["id"]}, headers=headers
    )
    assert tagged.status_code == 201
    await settle(committed)
    [wecom_group] = fake.corp_tag_groups()
    assert wecom_group["group_name"] == "会员"
    assert {t["name"] for t in wecom_group["tag"]} == {"金卡", "银卡"}
    tags = await local_tags(committed, corp)
    assert tags["会员/金卡"]["wecom_tag_id"] == fake.corp_tag_id("会员", "金卡")
    assert tags["会员/金卡"]["wecom_group_id"] == wecom_group["group_id"]
    # The contact tagged before the tag existed in WeCom is marked once it does.
    assert fake.contact_corp_tags("wmDEF") == {tags["会员/金卡"]["wecom_tag_id"]}

    renamed = await committed_client.patch(
        f"/v1/tags/{gold.json()['id']}", json={"name": "黑金卡"}, headers=headers
    )
    assert renamed.status_code == 200, renamed.text
    group_renamed = await committed_client.patch(
        f"/v1/tag-groups/{group_id}", json={"name": "会员等级"}, headers=headers
    )
    assert group_renamed.status_code == 200, group_renamed.text
    await settle(committed)
    [wecom_group] = fake.corp_tag_groups()
    assert wecom_group["group_name"] == "会员等级"
    assert {t["name"] for t in wecom_group["tag"]} == {"黑金卡", "银卡"}

    deleted = await committed_client.delete(f"/v1/tags/{silver.json()['id']}", headers=headers)
    assert deleted.status_code == 204
    await settle(committed)
    [wecom_group] = fake.corp_tag_groups()
    assert {t["name"] for t in wecom_group["tag"]} == {"黑金卡"}
    gone = await committed_client.delete(f"/v1/tag-groups/{group_id}", headers=headers)
    assert gone.status_code == 204
    await settle(committed)
    assert fake.corp_tag_groups() == []
    assert all(o["status"] == "done" for o in await ops(committed, corp))


async def test_names_over_30_characters_are_refused_and_never_sent(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant, fake: FakeWeCom
) -> None:
    headers = bearer(corp.admin)
    too_long = "标" * 31
    group = await committed_client.post(
        "/v1/tag-groups",
        json={"name": too_long, "half_life_days": None, "floor": 0, "mirror_to_wecom": True},
        headers=headers,
    )
    assert group.status_code == 422
    ok = await committed_client.post(
        "/v1/tag-groups",
        json={"name": "标" * 30, "half_life_days": None, "floor": 0, "mirror_to_wecom": True},
        headers=headers,
    )
    assert ok.status_code == 201
    tag = await committed_client.post(
        "/v1/tags", json={"group_id": ok.json()["id"], "name": too_long}, headers=headers
    )
    assert tag.status_code == 422
    fits = await committed_client.post(
        "/v1/tags", json={"group_id": ok.json()["id"], "name": "签" * 30}, headers=headers
    )
    assert fits.status_code == 201
    await settle(committed)
    [wecom_group] = fake.corp_tag_groups()
    assert wecom_group["group_name"] == "标" * 30
    assert [t["name"] for t in wecom_group["tag"]] == ["签" * 30]
    assert [o["kind"] for o in await ops(committed, corp)] == ["push_tag"]


async def test_a_corp_at_10000_tags_gets_no_more_and_the_op_says_why(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant, fake: FakeWeCom
) -> None:
    async with committed.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO wecom_corp_tags (tenant_id, wecom_id, kind, wecom_group_id, name)"
                " SELECT :t, 'et' || n, 'tag', 'etg', 'tag ' || n FROM generate_series(1, 10000) n"
            ),
            {"t": corp.tenant_id},
        )
    headers = bearer(corp.admin)
    group = await committed_client.post(
        "/v1/tag-groups",
        json={"name": "满", "half_life_days": None, "floor": 0, "mirror_to_wecom": True},
        headers=headers,
    )
    await committed_client.post(
        "/v1/tags", json={"group_id": group.json()["id"], "name": "多一个"}, headers=headers
    )
    await settle(committed)
    [push] = await ops(committed, corp, "push_tag")
    assert push["status"] == "failed" and push["attempts"] == 1, "no retry can cure it"
    assert "10000" in push["last_error"]
    assert fake.calls["/cgi-bin/externalcontact/add_corp_tag"] == 0


async def test_ops_of_a_worker_that_died_are_claimed_again_once_their_lease_ends(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant, fake: FakeWeCom
) -> None:
    fake.add_corp_tag_group("兴趣", ["茶"])
    response = await committed_client.post("/v1/wecom/tags/sync", headers=bearer(corp.admin))
    op_id = response.json()["id"]
    # A worker claims the sync and dies before it stores anything.
    async with unit_of_work(committed.sessionmaker) as session:
        [claimed] = await ops_repository.claim(
            session, corp.tenant_id, clock.now(), max_in_flight=5, lease_seconds=120
        )
    assert claimed.id == op_id
    await WeComTagQueue(committed).drain()
    [op] = await ops(committed, corp)
    assert op["status"] == "in_flight", "its lease still holds"
    assert fake.calls["/cgi-bin/externalcontact/get_corp_tag_list"] == 0
    with clock.use(later(121)):
        await WeComTagQueue(committed).drain()
    [op] = await ops(committed, corp)
    assert op["status"] == "done" and op["attempts"] == 2
    assert "兴趣/茶" in await local_tags(committed, corp)


async def test_tags_of_groups_not_mirrored_never_reach_wecom(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant, fake: FakeWeCom
) -> None:
    headers = bearer(corp.admin)
    group = await committed_client.post(
        "/v1/tag-groups", json={"name": "内部", "half_life_days": None, "floor": 0}, headers=headers
    )
    tag = await committed_client.post(
        "/v1/tags", json={"group_id": group.json()["id"], "name": "黑名单"}, headers=headers
    )
    contact = await add_contact(committed_client, committed, corp, fake, "wmLOCAL")
    tagged = await committed_client.post(
        f"/v1/contacts/{contact}/tags", json={"tag_id": tag.json()["id"]}, headers=headers
    )
    assert tagged.status_code == 201
    await committed_client.patch(
        f"/v1/tags/{tag.json()['id']}", json={"name": "灰名单"}, headers=headers
    )
    await settle(committed)
    assert await ops(committed, corp) == []
    assert fake.corp_tag_groups() == []
    assert sum(n for path, n in fake.calls.items() if "corp_tag" in path or "mark_tag" in path) == 0


async def test_roles_on_the_mirror_routes(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant
) -> None:
    async with unit_of_work(committed.sessionmaker) as session:
        tenant = await session.get(Tenant, corp.tenant_id)
        analyst = await make_key(session, tenant, "analyst")
        staff = await make_key(session, tenant, "staff")
        operator = await make_key(session, tenant, "operator")
    sync_by = {
        key: (await committed_client.post("/v1/wecom/tags/sync", headers=bearer(key))).status_code
        for key in (analyst, staff, operator)
    }
    assert sync_by == {analyst: 403, staff: 403, operator: 202}
    listed = await committed_client.get("/v1/wecom/tags/ops", headers=bearer(analyst))
    assert listed.status_code == 200 and [o["kind"] for o in listed.json()["items"]] == ["sync"]
    by_staff = await committed_client.get("/v1/wecom/tags/ops", headers=bearer(staff))
    assert by_staff.status_code == 403
    assert (await committed_client.get("/v1/wecom/tags")).status_code == 401


async def test_a_tag_wecom_has_already_is_linked_not_duplicated(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant, fake: FakeWeCom
) -> None:
    fake.add_corp_tag_group("兴趣", ["茶"])
    await sync(committed_client, committed, corp)
    group_id = (await local_groups(committed, corp))["兴趣"]["id"]
    # Made in WeCom's console too, and no callback reached us (yet).
    coffee = fake.add_corp_tag_in_console(fake.corp_tag_id("兴趣"), "咖啡")
    created = await committed_client.post(
        "/v1/tags", json={"group_id": group_id, "name": "咖啡"}, headers=bearer(corp.admin)
    )
    assert created.status_code == 201
    await settle(committed)
    assert (await local_tags(committed, corp))["兴趣/咖啡"]["wecom_tag_id"] == coffee
    [wecom_group] = fake.corp_tag_groups()
    assert [t["name"] for t in wecom_group["tag"]] == ["茶", "咖啡"]
    [push] = await ops(committed, corp, "push_tag")
    assert push["status"] == "done" and push["result"]["created"] == coffee


async def test_changes_of_one_contact_waiting_together_are_one_mark_tag(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant, fake: FakeWeCom
) -> None:
    fake.add_corp_tag_group("兴趣", ["茶", "咖啡", "酒"])
    await sync(committed_client, committed, corp)
    tags = await local_tags(committed, corp)
    contact = await add_contact(committed_client, committed, corp, fake, "wmONE")
    headers = bearer(corp.admin)
    for name in ("茶", "咖啡", "酒"):
        added = await committed_client.post(
            f"/v1/contacts/{contact}/tags",
            json={"tag_id": tags[f"兴趣/{name}"]["id"]},
            headers=headers,
        )
        assert added.status_code == 201
    removed = await committed_client.delete(
        f"/v1/contacts/{contact}/tags/{tags['兴趣/酒']['id']}", headers=headers
    )
    assert removed.status_code == 204
    await settle(committed)
    [mark] = await ops(committed, corp, "mark")
    assert sorted(mark["payload"]["tag_ids"]) == sorted(
        tags[f"兴趣/{n}"]["id"] for n in ("茶", "咖啡", "酒")
    )
    [request] = fake.mark_tag_requests
    assert sorted(request["add_tag"]) == sorted(
        tags[f"兴趣/{n}"]["wecom_tag_id"] for n in ("茶", "咖啡")
    )
    assert request["remove_tag"] == [tags["兴趣/酒"]["wecom_tag_id"]]
    assert fake.contact_corp_tags("wmONE") == {
        tags[f"兴趣/{n}"]["wecom_tag_id"] for n in ("茶", "咖啡")
    }


async def test_the_first_callback_of_a_corp_never_synced_brings_its_initial_sync(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant, fake: FakeWeCom
) -> None:
    fake.add_corp_tag_group("客户等级", ["VIP", "普通"])
    group = fake.add_corp_tag_group("兴趣", ["茶"])
    await callback(committed_client, corp, tag_callback("create", group["group_id"], "tag_group"))
    await settle(committed)
    assert set(await local_tags(committed, corp)) == {"客户等级/VIP", "客户等级/普通", "兴趣/茶"}
    assert [(o["kind"], o["status"]) for o in await ops(committed, corp)] == [
        ("sync", "done"),
        ("fetch", "done"),
    ]
    await callback(committed_client, corp, tag_callback("update", group["group_id"], "tag_group"))
    await settle(committed)
    assert [o["kind"] for o in await ops(committed, corp)] == ["sync", "fetch", "fetch"]


async def test_mark_tag_goes_as_the_owner_when_several_staff_follow(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant, fake: FakeWeCom
) -> None:
    tea = await _mirrored_tag(committed_client, committed, corp, fake)
    fake.add_contact("wmTWO", "两位跟进", follow_users=[{"userid": "lisi"}, {"userid": "zhangsan"}])
    for staff, at in (("zhangsan", 1700000000), ("lisi", 1700000500)):
        await callback(
            committed_client,
            corp,
            contact_event("add_external_contact", user=staff, external="wmTWO", at=at),
        )
    await process_all(committed)
    [item] = (
        await committed_client.get(
            "/v1/contacts", params={"external_userid": "wmTWO"}, headers=bearer(corp.admin)
        )
    ).json()["items"]
    async with committed.engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO tagging_profiles (tenant_id, contact_id) VALUES (:t, :c)"),
            {"t": corp.tenant_id, "c": uuid.UUID(item["id"])},
        )
    await committed_client.post(
        f"/v1/contacts/{item['id']}/tags", json={"tag_id": tea["id"]}, headers=bearer(corp.admin)
    )
    await settle(committed)
    [request] = fake.mark_tag_requests
    assert request["userid"] == "zhangsan", "the owner: the first to add the customer"
    assert fake.contact_corp_tags("wmTWO", "zhangsan") == {tea["wecom_tag_id"]}
    assert fake.contact_corp_tags("wmTWO", "lisi") == set()
