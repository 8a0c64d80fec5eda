"""Contacts over HTTP: OneID merges, masking per role, staff scope, filters, erasure, at-rest."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import text

from shared.db import unit_of_work
from shared.models import Tenant
from shared.runtime import Runtime
from tests.helpers import bearer, make_key
from tests.users.support import WeComTenant, contact_event, post, process_all, wecom_tenant

PHONE = "13812341234"
PHONE_E164 = "+8613812341234"  # as stored and shown


@pytest.fixture
async def corp(committed: Runtime) -> WeComTenant:
    return await wecom_tenant(committed)


async def keys(runtime: Runtime, corp: WeComTenant) -> dict[str, str]:
    async with unit_of_work(runtime.sessionmaker) as session:
        tenant = await session.get(Tenant, corp.tenant_id)
        return {
            "admin": corp.admin,
            "operator": await make_key(session, tenant, "operator"),
            "analyst": await make_key(session, tenant, "analyst"),
            "staff": await make_key(session, tenant, "staff"),  # staff userid "staff-1"
        }


def event(event_id: str, type_: str = "checkin", **contact: str) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "type": type_,
        "occurred_at": f"2026-11-20T10:00:{len(event_id):02d}+08:00",
        "contact": contact,
        "properties": {},
    }


async def one_contact_id(client: httpx.AsyncClient, key: str, **filters: str) -> str:
    items = (await client.get("/v1/contacts", params=filters, headers=bearer(key))).json()["items"]
    assert len(items) == 1, items
    return str(items[0]["id"])


async def test_events_proving_one_person_merge_two_contacts(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant
) -> None:
    await post(committed_client, corp.signed(event("e1", external_userid="wmMERGE")))
    await process_all(committed)
    await post(committed_client, corp.signed(event("e2", phone=PHONE)))
    await process_all(committed)
    listed = (await committed_client.get("/v1/contacts", headers=bearer(corp.admin))).json()[
        "items"
    ]
    assert len(listed) == 2
    await post(committed_client, corp.signed(event("e3", external_userid="wmMERGE", phone=PHONE)))
    await process_all(committed)
    [survivor] = (await committed_client.get("/v1/contacts", headers=bearer(corp.admin))).json()[
        "items"
    ]
    detail = (
        await committed_client.get(f"/v1/contacts/{survivor['id']}", headers=bearer(corp.admin))
    ).json()
    assert sorted((i["kind"], i["value"]) for i in detail["identities"]) == [
        ("external_userid", "wmMERGE"),
        ("phone", PHONE_E164),
    ]
    [merged_id] = detail["merged_from"]
    merged = (
        await committed_client.get(f"/v1/contacts/{merged_id}", headers=bearer(corp.admin))
    ).json()
    assert merged["merged_into"] == survivor["id"]
    timeline = (
        await committed_client.get(
            f"/v1/contacts/{survivor['id']}/events", headers=bearer(corp.admin)
        )
    ).json()
    assert sorted(e["source_event_id"] for e in timeline["items"]) == ["e1", "e2", "e3"], (
        "history follows"
    )
    async with committed.engine.connect() as conn:
        merges = (
            await conn.execute(
                text("SELECT payload FROM outbox_events WHERE type = 'contact.merged'")
            )
        ).all()
    assert [m[0]["survivor_id"] for m in merges] == [survivor["id"]]
    by_phone = await one_contact_id(committed_client, corp.admin, phone="+86 138-1234-1234")
    assert by_phone == survivor["id"], "phone lookups normalise"


async def test_masking_per_role_and_audited_unmasked_reads(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant
) -> None:
    roles = await keys(committed, corp)
    await post(committed_client, corp.signed(event("m1", phone=PHONE, unionid="oUNION1234567890")))
    await process_all(committed)
    contact_id = await one_contact_id(committed_client, corp.admin)
    await committed_client.patch(
        f"/v1/contacts/{contact_id}", json={"name": "张三丰"}, headers=bearer(corp.admin)
    )
    seen = {}
    for role in ("admin", "operator", "analyst"):
        body = (
            await committed_client.get(f"/v1/contacts/{contact_id}", headers=bearer(roles[role]))
        ).json()
        seen[role] = (body["name"], {i["kind"]: i["value"] for i in body["identities"]})
    assert seen["admin"] == ("张三丰", {"phone": PHONE_E164, "unionid": "oUNION1234567890"})
    assert seen["operator"] == seen["admin"]
    assert seen["analyst"] == ("张**", {"phone": "+86138****1234", "unionid": "oUNI****7890"})
    listed = (await committed_client.get("/v1/contacts", headers=bearer(roles["analyst"]))).json()[
        "items"
    ]
    assert listed[0]["name"] == "张**"
    async with committed.engine.connect() as conn:
        audited = (
            await conn.execute(
                text(
                    "SELECT role, target->>'id' FROM audit_log "
                    "WHERE action = 'read_personal_data contact' ORDER BY id"
                )
            )
        ).all()
    assert [tuple(a) for a in audited] == [
        ("admin", contact_id),  # the PATCH's answer shows it unmasked too
        ("admin", contact_id),
        ("operator", contact_id),
    ]


async def test_staff_see_only_their_own_contacts(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant
) -> None:
    roles = await keys(committed, corp)
    await post(
        committed_client,
        corp.callback(contact_event("add_external_contact", user="staff-1", external="wmMINE")),
    )
    await post(
        committed_client,
        corp.callback(contact_event("add_external_contact", user="someone", external="wmTHEIRS")),
    )
    await process_all(committed)
    mine = (await committed_client.get("/v1/contacts", headers=bearer(roles["staff"]))).json()[
        "items"
    ]
    assert len(mine) == 1 and mine[0]["owner_staff_userid"] == "staff-1"
    theirs = await one_contact_id(committed_client, corp.admin, owner="someone")
    hidden = await committed_client.get(f"/v1/contacts/{theirs}", headers=bearer(roles["staff"]))
    assert hidden.status_code == 404
    own = (
        await committed_client.get(f"/v1/contacts/{mine[0]['id']}", headers=bearer(roles["staff"]))
    ).json()
    assert own["identities"][0]["value"] == "wmMINE", "staff read their own contacts unmasked"


async def test_filters_pagination_and_patch(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant
) -> None:
    batch = {"events": [event(f"p{i:02d}", phone=f"1390000{i:04d}") for i in range(7)]}
    await post(committed_client, corp.signed(batch))
    await process_all(committed)
    ids: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = (
            await committed_client.get("/v1/contacts", params=params, headers=bearer(corp.admin))
        ).json()
        ids += [c["id"] for c in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(ids) == 7 and len(set(ids)) == 7
    target = await one_contact_id(committed_client, corp.admin, phone="13900000003")
    patched = await committed_client.patch(
        f"/v1/contacts/{target}",
        json={"name": "Wang Xiaoming", "attributes": {"vip_level": 3, "city": "Hangzhou"}},
        headers=bearer(corp.admin),
    )
    assert patched.status_code == 200 and patched.json()["attributes"] == {
        "vip_level": 3,
        "city": "Hangzhou",
    }
    removed = await committed_client.patch(
        f"/v1/contacts/{target}", json={"attributes": {"city": None}}, headers=bearer(corp.admin)
    )
    assert removed.json()["attributes"] == {"vip_level": 3}
    assert await one_contact_id(committed_client, corp.admin, q="xiaom") == target, "free-text name"
    empty = (
        await committed_client.get("/v1/contacts", params={"q": "zzz"}, headers=bearer(corp.admin))
    ).json()
    assert empty["items"] == []
    bad = await committed_client.patch(
        f"/v1/contacts/{target}", json={"attributes": {"bad key": 1}}, headers=bearer(corp.admin)
    )
    assert bad.status_code == 422
    assert (
        await committed_client.get(
            "/v1/contacts", params={"cursor": "!!"}, headers=bearer(corp.admin)
        )
    ).status_code == 422
    stage = (
        await committed_client.get(
            "/v1/contacts", params={"lifecycle_stage": "potential"}, headers=bearer(corp.admin)
        )
    ).json()
    assert len(stage["items"]) == 7


async def test_erasure_destroys_identity_and_keeps_history_pseudonymous(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant
) -> None:
    roles = await keys(committed, corp)
    await post(
        committed_client, corp.callback(contact_event("add_external_contact", external="wmERASE"))
    )
    await post(
        committed_client,
        corp.signed(
            event("x1", "order.paid", external_userid="wmERASE", phone=PHONE)
            | {"properties": {"order_id": "SO-1", "amount_fen": 100}}
        ),
    )
    await process_all(committed)
    contact_id = await one_contact_id(committed_client, corp.admin)
    await committed_client.patch(
        f"/v1/contacts/{contact_id}", json={"name": "李四"}, headers=bearer(corp.admin)
    )
    assert (
        await committed_client.delete(
            f"/v1/contacts/{contact_id}", headers=bearer(roles["operator"])
        )
    ).status_code == 403
    erased = await committed_client.delete(f"/v1/contacts/{contact_id}", headers=bearer(corp.admin))
    assert erased.status_code == 200 and erased.json()["pseudonym"].startswith("erased-")
    again = await committed_client.delete(f"/v1/contacts/{contact_id}", headers=bearer(corp.admin))
    assert again.status_code == 409
    detail = (
        await committed_client.get(f"/v1/contacts/{contact_id}", headers=bearer(corp.admin))
    ).json()
    assert detail["erased"] and detail["identities"] == [] and detail["name"] is None
    timeline = (
        await committed_client.get(f"/v1/contacts/{contact_id}/events", headers=bearer(corp.admin))
    ).json()
    assert len(timeline["items"]) == 2, "counts stay: the history remains, emptied"
    assert all(e["properties"] == {} for e in timeline["items"])
    assert (
        await committed_client.get(
            "/v1/contacts", params={"phone": PHONE}, headers=bearer(corp.admin)
        )
    ).json()["items"] == []
    async with committed.engine.connect() as conn:
        raw = await conn.scalar(
            text("SELECT count(*) FROM inbound_events WHERE payload_enc IS NOT NULL")
        )
        erased_event = await conn.scalar(
            text("SELECT count(*) FROM outbox_events WHERE type = 'contact.erased'")
        )
    assert raw == 0 and erased_event == 1


async def test_database_dump_shows_no_personal_data(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant
) -> None:
    secrets = {
        "phone": "13987654321",
        "unionid": "oUnionSecret42abc",
        "external_userid": "wmSecretExternal9",
    }
    await post(
        committed_client,
        corp.callback(contact_event("add_external_contact", external=secrets["external_userid"])),
    )
    await post(committed_client, corp.signed(event("d1", **secrets)))
    await process_all(committed)
    contact_id = await one_contact_id(committed_client, corp.admin)
    await committed_client.patch(
        f"/v1/contacts/{contact_id}", json={"name": "欧阳娜娜"}, headers=bearer(corp.admin)
    )
    dump = []
    async with committed.engine.connect() as conn:
        tables = [
            r[0]
            for r in await conn.execute(
                text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            )
        ]
        for table in tables:
            dump += [r[0] for r in await conn.execute(text(f'SELECT t::text FROM "{table}" t'))]
    text_dump = "\n".join(dump)
    assert contact_id in text_dump, "the dump is real"
    for value in [*secrets.values(), "欧阳娜娜", "QDG6eK", corp.webhook_secret]:
        assert value not in text_dump, value
        assert value.encode().hex() not in text_dump, value
