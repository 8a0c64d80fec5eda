"""The tags on one contact over HTTP: tag by hand (201 / 200), set a weight, remove,
history; exclusive groups; who sees which contact."""

from __future__ import annotations

import uuid

import httpx
from sqlalchemy.ext.asyncio import AsyncSession

from tests.tagging.test_tags_support import (
    create_group,
    create_tag,
    make_brand,
    make_contact,
    snapshot,
    tag_events,
)


async def test_tagging_a_contact_by_hand(client: httpx.AsyncClient, session: AsyncSession) -> None:
    brand = await make_brand(session)
    group = await create_group(client, brand, name="interest", half_life_days=30, floor=1)
    tea = await create_tag(client, brand, group, "tea")
    contact = await make_contact(session, brand)
    url = f"/v1/contacts/{contact}/tags"

    added = await client.post(url, json={"tag_id": tea}, headers=brand.headers())
    assert added.status_code == 201, added.text
    body = added.json()
    assert {k: body[k] for k in ("tag_id", "tag", "group_id", "group", "weight", "source")} == {
        "tag_id": tea,
        "tag": "tea",
        "group_id": group,
        "group": "interest",
        "weight": 1.0,
        "source": "manual",
    }
    held = await client.post(url, json={"tag_id": tea}, headers=brand.headers())
    assert held.status_code == 200 and held.json()["weight"] == 1.0
    assert [t for t, _ in await tag_events(session, brand)] == ["tag.added"]

    weighted = await client.post(url, json={"tag_id": tea, "weight": 40}, headers=brand.headers())
    assert weighted.status_code == 200 and weighted.json()["weight"] == 40.0
    events = await tag_events(session, brand)
    assert events[-1][0] == "tag.weight_changed"
    assert (events[-1][1]["from"], events[-1][1]["to"]) == (1.0, 40.0)

    listed = await client.get(url, headers=brand.headers("analyst"))
    assert listed.status_code == 200
    [item] = listed.json()["items"]
    assert item["weight"] == 40.0 and item["history"] is None
    with_history = await client.get(url, params={"history": "true"}, headers=brand.headers())
    [item] = with_history.json()["items"]
    assert [(h["action"], h["weight"], h["source"]) for h in item["history"]] == [
        ("added", 1.0, "manual"),
        ("set", 40.0, "manual"),
    ]

    removed = await client.delete(f"{url}/{tea}", headers=brand.headers())
    assert removed.status_code == 204
    assert (await client.get(url, headers=brand.headers())).json()["items"] == []
    assert (await tag_events(session, brand))[-1] == (
        "tag.removed",
        {
            "contact_id": str(contact),
            "tag_id": tea,
            "group_id": group,
            "reason": "manual",
            "occurred_at": (await tag_events(session, brand))[-1][1]["occurred_at"],
        },
    )
    again = await client.delete(f"{url}/{tea}", headers=brand.headers())
    assert again.status_code == 404 and again.json()["error"]["code"] == "contact_tag_not_found"


async def test_bad_requests_change_nothing(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    brand = await make_brand(session)
    tag = await create_tag(client, brand, await create_group(client, brand))
    contact = await make_contact(session, brand)
    url = f"/v1/contacts/{contact}/tags"
    before = await snapshot(session, brand)
    for body in (
        {"tag_id": tag, "weight": 0},
        {"tag_id": tag, "weight": -3},
        {"tag_id": tag, "weight": "heavy"},
        {"tag_id": tag, "weight": 1e300},
        {"tag_id": str(tag)},
        {"weight": 3},
        {"tag_id": tag, "extra": 1},
        [tag],
    ):
        response = await client.post(url, json=body, headers=brand.headers())
        assert response.status_code == 422, (body, response.text)
    unknown = await client.post(url, json={"tag_id": 987654}, headers=brand.headers())
    assert unknown.status_code == 422 and unknown.json()["error"]["code"] == "unknown_tag"
    malformed = await client.post(
        url, content=b"{not json", headers={**brand.headers(), "Content-Type": "application/json"}
    )
    assert malformed.status_code == 400
    assert await snapshot(session, brand) == before


async def test_an_exclusive_group_holds_one_tag(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    brand = await make_brand(session)
    group = await create_group(client, brand, name="age band", exclusive=True, kind="basic")
    young, old = (
        await create_tag(client, brand, group, "18-25"),
        await create_tag(client, brand, group, "26-35"),
    )
    contact = await make_contact(session, brand)
    url = f"/v1/contacts/{contact}/tags"
    assert (
        await client.post(url, json={"tag_id": young}, headers=brand.headers())
    ).status_code == 201
    assert (
        await client.post(url, json={"tag_id": old}, headers=brand.headers())
    ).status_code == 201
    items = (await client.get(url, headers=brand.headers())).json()["items"]
    assert [i["tag_id"] for i in items] == [old]
    removed = [p for t, p in await tag_events(session, brand) if t == "tag.removed"]
    assert [(p["tag_id"], p["reason"]) for p in removed] == [(young, "exclusive")]


async def test_a_staff_key_sees_only_its_own_contacts(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    brand = await make_brand(session)
    tag = await create_tag(client, brand, await create_group(client, brand))
    mine = await make_contact(session, brand, owner="staff-1")
    theirs = await make_contact(session, brand, owner="staff-2")
    for contact in (mine, theirs):
        response = await client.post(
            f"/v1/contacts/{contact}/tags", json={"tag_id": tag}, headers=brand.headers()
        )
        assert response.status_code == 201
    own = await client.get(f"/v1/contacts/{mine}/tags", headers=brand.headers("staff"))
    assert own.status_code == 200 and [i["tag_id"] for i in own.json()["items"]] == [tag]
    other = await client.get(f"/v1/contacts/{theirs}/tags", headers=brand.headers("staff"))
    assert other.status_code == 404 and other.json()["error"]["code"] == "not_found"
    missing = await client.get(f"/v1/contacts/{uuid.uuid4()}/tags", headers=brand.headers())
    assert missing.status_code == 404
    # Staff keys read; they do not write.
    refused = await client.post(
        f"/v1/contacts/{mine}/tags", json={"tag_id": tag}, headers=brand.headers("staff")
    )
    assert refused.status_code == 403
    stranger = await make_brand(session)
    foreign = await client.get(f"/v1/contacts/{mine}/tags", headers=stranger.headers())
    assert foreign.status_code == 404


async def test_merged_and_erased_contacts_have_no_tags_to_write(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    brand = await make_brand(session)
    tag = await create_tag(client, brand, await create_group(client, brand))
    for status in ("merged", "erased"):
        contact = await make_contact(session, brand, status=status)
        response = await client.post(
            f"/v1/contacts/{contact}/tags", json={"tag_id": tag}, headers=brand.headers()
        )
        assert response.status_code == 404, response.text
        assert response.json()["error"]["code"] == "contact_not_found"
        assert response.json()["error"]["details"] == {"status": status}
