"""`contact.profile_changed`: published with the full current profile facts whenever a
contact is created (every path) or its owner, channel or attributes change, and never
when nothing changed."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from services.users import sync
from services.users.events import ContactProfileChanged
from shared.db import unit_of_work
from shared.models import Tenant
from shared.runtime import Runtime
from tests.helpers import bearer, make_key
from tests.users.support import (
    WeComTenant,
    chat_event,
    contact_event,
    post,
    process_all,
    wecom_tenant,
)

PROFILE = "contact.profile_changed"


@pytest.fixture
async def corp(committed: Runtime) -> WeComTenant:
    return await wecom_tenant(committed)


async def profiles(runtime: Runtime, contact_id: str | None = None) -> list[dict[str, Any]]:
    """The profile events published so far (of one contact), oldest first, each checked
    against the catalog's payload model."""
    async with runtime.engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT payload FROM outbox_events WHERE type = :type "
                "AND (CAST(:c AS text) IS NULL OR payload->>'contact_id' = :c) ORDER BY id"
            ),
            {"type": PROFILE, "c": contact_id},
        )
        payloads = [dict(r[0]) for r in rows]
    for payload in payloads:
        ContactProfileChanged.model_validate(payload)
        assert set(payload) == {"contact_id", "created_at", "owner_staff", "channel", "attributes"}
    return payloads


async def contact_ids(runtime: Runtime) -> list[str]:
    async with runtime.engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT id::text FROM contacts WHERE merged_into_id IS NULL ORDER BY created_at")
        )
        return [r[0] for r in rows]


def event(event_id: str, type_: str = "checkin", **contact: str) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "type": type_,
        "occurred_at": "2026-11-20T10:00:00+08:00",
        "contact": contact,
        "properties": {},
    }


async def test_a_wecom_add_publishes_the_new_contacts_owner_and_channel_once(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant
) -> None:
    add = contact_event("add_external_contact", external="wmP1", user="zhangsan", State="live-1")
    assert (await post(committed_client, corp.callback(add))).text == "success"
    await process_all(committed)
    [contact_id] = await contact_ids(committed)
    published = await profiles(committed, contact_id)
    assert published[-1]["owner_staff"] == "zhangsan" and published[-1]["channel"] == "live-1"
    assert published[-1]["attributes"] == {}
    before = len(published)
    # Another staff member adds them too, then an edit: owner and channel stay as they were.
    for xml in (
        contact_event(
            "add_external_contact", external="wmP1", user="lisi", State="live-2", at=1700000100
        ),
        contact_event("edit_external_contact", external="wmP1", user="lisi", at=1700000200),
        contact_event("del_external_contact", external="wmP1", user="lisi", at=1700000300),
    ):
        await post(committed_client, corp.callback(xml))
    await process_all(committed)
    assert len(await profiles(committed, contact_id)) == before, "nothing changed"


async def test_a_business_event_that_creates_a_contact_publishes_it_once(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant
) -> None:
    await post(committed_client, corp.signed(event("e1", phone="13812340001")))
    await process_all(committed)
    [contact_id] = await contact_ids(committed)
    [published] = await profiles(committed)
    assert published["contact_id"] == contact_id
    assert (published["owner_staff"], published["channel"], published["attributes"]) == (
        None,
        None,
        {},
    )
    # Later events of the same contact (and a repeat of the first) change nothing.
    await post(committed_client, corp.signed({"events": [event("e1", phone="13812340001")]}))
    await post(committed_client, corp.signed(event("e2", "share", phone="+86 138 1234 0001")))
    await process_all(committed)
    assert len(await profiles(committed)) == 1
    # The owner a WeCom add gives the contact is a change.
    await post(
        committed_client,
        corp.signed(event("e3", external_userid="wmP2", phone="13812340001")),
    )
    await post(
        committed_client,
        corp.callback(contact_event("add_external_contact", external="wmP2", user="wangwu")),
    )
    await process_all(committed)
    last = (await profiles(committed, contact_id))[-1]
    assert last["owner_staff"] == "wangwu" and last["channel"] is None


async def test_a_contact_the_event_api_creates_is_published(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant
) -> None:
    async with unit_of_work(committed.sessionmaker) as session:
        tenant = await session.get(Tenant, corp.tenant_id)
        operator = await make_key(session, tenant, "operator")
    body = [event("api-1", unionid="unionP3"), event("api-2", "share", unionid="unionP3")]
    response = await committed_client.post("/v1/events", json=body, headers=bearer(operator))
    assert response.status_code == 202, response.text
    await process_all(committed)
    [contact_id] = await contact_ids(committed)
    assert [p["contact_id"] for p in await profiles(committed)] == [contact_id]


async def test_patching_attributes_publishes_only_a_real_change(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant
) -> None:
    await post(committed_client, corp.signed(event("e1", phone="13812340002")))
    await process_all(committed)
    [contact_id] = await contact_ids(committed)
    url = f"/v1/contacts/{contact_id}"
    patched = await committed_client.patch(
        url, json={"attributes": {"city": "Hangzhou", "vip": True}}, headers=bearer(corp.admin)
    )
    assert patched.status_code == 200, patched.text
    published = await profiles(committed, contact_id)
    assert len(published) == 2
    assert published[-1]["attributes"] == {"city": "Hangzhou", "vip": True}
    for body in ({"attributes": {"city": "Hangzhou"}}, {"name": "Li Lei"}):
        response = await committed_client.patch(url, json=body, headers=bearer(corp.admin))
        assert response.status_code == 200, response.text
    assert len(await profiles(committed, contact_id)) == 2, "no attribute changed"
    await committed_client.patch(
        url, json={"attributes": {"vip": None}}, headers=bearer(corp.admin)
    )
    assert (await profiles(committed, contact_id))[-1]["attributes"] == {"city": "Hangzhou"}


async def test_an_import_publishes_created_and_changed_contacts_once_each(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant
) -> None:
    def upload(body: str) -> Any:
        return committed_client.post(
            "/v1/contacts/import",
            content=body.encode(),
            headers={**bearer(corp.admin), "content-type": "text/csv"},
        )

    first = "phone,owner_staff_userid,attr.city\n13812340003,zhangsan,Hangzhou\n13812340004,,\n"
    assert (await upload(first)).status_code == 200
    published = await profiles(committed)
    assert sorted((p["owner_staff"] or "", tuple(p["attributes"].items())) for p in published) == [
        ("", ()),
        ("zhangsan", (("city", "Hangzhou"),)),
    ]
    assert (await upload(first)).status_code == 200
    assert len(await profiles(committed)) == 2, "importing again changes nothing"
    # A name alone is no profile fact; an attribute and an owner are.
    renamed = "phone,name,owner_staff_userid,attr.city\n13812340003,Li Lei,lisi,Hangzhou\n"
    assert (await upload(renamed)).status_code == 200
    assert len(await profiles(committed)) == 2, "the owner is kept, the city is the same"
    changed = "phone,owner_staff_userid\n13812340004,lisi\n"
    assert (await upload(changed)).status_code == 200
    last = (await profiles(committed))[-1]
    assert last["owner_staff"] == "lisi" and len(await profiles(committed)) == 3


async def test_enrichment_that_gives_an_owner_publishes_the_change(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant
) -> None:
    await post(committed_client, corp.signed(event("e1", external_userid="wmP5")))
    await process_all(committed)
    [contact_id] = await contact_ids(committed)
    data = {"external_contact": {"external_userid": "wmP5", "name": "Han Meimei"}}
    follow = {"userid": "zhaoliu", "state": "ch9", "createtime": 1700000000}
    for _ in range(2):  # the second time changes nothing
        async with unit_of_work(committed.sessionmaker) as session:
            found = await sync.apply_contact(session, corp.tenant_id, data, [follow])
        assert str(found) == contact_id
    published = await profiles(committed, contact_id)
    assert len(published) == 2
    assert (published[-1]["owner_staff"], published[-1]["channel"]) == ("zhaoliu", "ch9")


async def test_a_merge_publishes_what_the_survivor_took_over(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant
) -> None:
    # The older contact (the survivor) has no owner; the younger one has one.
    await post(committed_client, corp.signed(event("e1", phone="13812340006")))
    await process_all(committed)
    await post(
        committed_client,
        corp.callback(contact_event("add_external_contact", external="wmP6", State="ch6")),
    )
    await process_all(committed)
    [survivor, merged] = await contact_ids(committed)
    assert len(await profiles(committed, survivor)) == 1
    await post(
        committed_client, corp.signed(event("e2", external_userid="wmP6", phone="13812340006"))
    )
    await process_all(committed)
    assert await contact_ids(committed) == [survivor]
    last = (await profiles(committed, survivor))[-1]
    assert (last["owner_staff"], last["channel"]) == ("zhangsan", "ch6")
    assert uuid.UUID(merged)


async def test_a_contact_first_seen_joining_a_group_is_published_once(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant
) -> None:
    joined = chat_event(
        "update", UpdateDetail="add_member", MemChangeCnt="1", members=["wmP7", "zhangsan"]
    )
    left = chat_event(
        "update", at=1700000100, UpdateDetail="del_member", MemChangeCnt="1", members=["wmP7"]
    )
    for xml in (joined, left):
        assert (await post(committed_client, corp.callback(xml))).text == "success"
    await process_all(committed)
    [contact_id] = await contact_ids(committed)
    [published] = await profiles(committed)
    assert published["contact_id"] == contact_id and published["owner_staff"] is None
