"""Tag groups and tags over HTTP: create, list, read, patch, delete; names, limits,
duplicates and bad bodies refused with nothing changed; roles."""

from __future__ import annotations

import uuid

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.tagging.tags import service
from tests.tagging.test_tags_support import (
    create_group,
    create_tag,
    make_brand,
    make_contact,
    snapshot,
    tag_events,
)


async def test_a_group_is_created_read_listed_patched_and_deleted(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    brand = await make_brand(session)
    body = {
        "name": "兴趣 interest",
        "half_life_days": 30,
        "floor": 5,
        "kind": "interest",
        "exclusive": False,
        "decay_manual": True,
    }
    created = await client.post("/v1/tag-groups", json=body, headers=brand.headers())
    assert created.status_code == 201, created.text
    group_id = created.json()["id"]
    got = await client.get(f"/v1/tag-groups/{group_id}", headers=brand.headers("analyst"))
    assert got.status_code == 200
    assert {k: got.json()[k] for k in body} == {**body, "half_life_days": 30.0, "floor": 5.0}
    assert got.json()["tag_count"] == 0 and got.json()["mirror_to_wecom"] is False
    listed = await client.get("/v1/tag-groups", headers=brand.headers("staff"))
    assert [g["id"] for g in listed.json()["items"]] == [group_id]

    patched = await client.patch(
        f"/v1/tag-groups/{group_id}",
        json={"name": "interest", "half_life_days": None},
        headers=brand.headers(),
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["name"] == "interest" and patched.json()["half_life_days"] is None

    deleted = await client.delete(f"/v1/tag-groups/{group_id}", headers=brand.headers())
    assert deleted.status_code == 204
    gone = await client.get(f"/v1/tag-groups/{group_id}", headers=brand.headers())
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "tag_group_not_found"


async def test_a_tag_is_created_read_listed_renamed_and_deleted(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    brand = await make_brand(session)
    group_a = await create_group(client, brand, name="a")
    group_b = await create_group(client, brand, name="b")
    tea = await create_tag(client, brand, group_a, "tea")
    coffee = await create_tag(client, brand, group_b, "coffee")
    got = await client.get(f"/v1/tags/{tea}", headers=brand.headers("analyst"))
    assert got.status_code == 200
    assert {k: got.json()[k] for k in ("id", "group_id", "group", "name")} == {
        "id": tea,
        "group_id": group_a,
        "group": "a",
        "name": "tea",
    }
    everything = await client.get("/v1/tags", headers=brand.headers("staff"))
    assert [t["id"] for t in everything.json()["items"]] == [tea, coffee]
    of_b = await client.get("/v1/tags", params={"group_id": group_b}, headers=brand.headers())
    assert [t["id"] for t in of_b.json()["items"]] == [coffee]
    first = await client.get("/v1/tags", params={"limit": 1}, headers=brand.headers())
    assert [t["id"] for t in first.json()["items"]] == [tea]
    rest = await client.get(
        "/v1/tags",
        params={"limit": 1, "cursor": first.json()["next_cursor"]},
        headers=brand.headers(),
    )
    assert [t["id"] for t in rest.json()["items"]] == [coffee]

    renamed = await client.patch(
        f"/v1/tags/{tea}", json={"name": "green tea"}, headers=brand.headers()
    )
    assert renamed.status_code == 200 and renamed.json()["name"] == "green tea"
    assert (await client.delete(f"/v1/tags/{tea}", headers=brand.headers())).status_code == 204
    assert (await client.get(f"/v1/tags/{tea}", headers=brand.headers())).status_code == 404
    group = await client.get(f"/v1/tag-groups/{group_a}", headers=brand.headers())
    assert group.json()["tag_count"] == 0


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/tag-groups", {"name": "x" * 31, "half_life_days": 30, "floor": 1}, "name"),
        ("/v1/tag-groups", {"name": "", "half_life_days": 30, "floor": 1}, "name"),
        ("/v1/tag-groups", {"name": "g", "half_life_days": 0, "floor": 1}, "half_life_days"),
        ("/v1/tag-groups", {"name": "g", "half_life_days": "30", "floor": 1}, "half_life_days"),
        ("/v1/tag-groups", {"name": "g", "half_life_days": 30, "floor": -1}, "floor"),
        ("/v1/tag-groups", {"name": "g", "floor": 1}, "half_life_days"),
        ("/v1/tag-groups", {"name": "g", "half_life_days": 1, "floor": 1, "kind": "x"}, "kind"),
        (
            "/v1/tag-groups",
            {"name": "g", "half_life_days": 1, "floor": 1, "exclusive": "yes"},
            "exclusive",
        ),
        (
            "/v1/tag-groups",
            {"name": "g", "half_life_days": 1, "floor": 1, "colour": "red"},
            "colour",
        ),
        ("/v1/tag-groups", {"name": 7, "half_life_days": 1, "floor": 1}, "name"),
        ("/v1/tags", {"group_id": "GROUP", "name": "t"}, "group_id"),
        ("/v1/tags", {"group_id": 1, "name": "y" * 31}, "name"),
        ("/v1/tags", {"name": "t"}, "group_id"),
    ],
)
async def test_bad_bodies_are_refused_naming_the_field_and_change_nothing(
    client: httpx.AsyncClient, session: AsyncSession, path: str, body: object, field: str
) -> None:
    brand = await make_brand(session)
    await create_group(client, brand, name="kept")
    before = await snapshot(session, brand)
    response = await client.post(path, json=body, headers=brand.headers())
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert any(field in map(str, d["loc"]) for d in error["details"]), error
    assert await snapshot(session, brand) == before


async def test_a_30_character_name_is_fine_and_31_is_not(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    brand = await make_brand(session)
    group = await create_group(client, brand, name="标" * 30)
    await create_tag(client, brand, group, "签" * 30)
    too_long = await client.patch(
        f"/v1/tag-groups/{group}", json={"name": "标" * 31}, headers=brand.headers()
    )
    assert too_long.status_code == 422


async def test_duplicates_conflict_and_unknown_groups_are_refused(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    brand = await make_brand(session)
    group = await create_group(client, brand, name="interest")
    other = await create_group(client, brand, name="engagement")
    await create_tag(client, brand, group, "tea")
    await create_tag(client, brand, other, "tea")  # another group: fine
    before = await snapshot(session, brand)

    twice = await client.post(
        "/v1/tag-groups",
        json={"name": "interest", "half_life_days": None, "floor": 0},
        headers=brand.headers(),
    )
    assert twice.status_code == 409 and twice.json()["error"]["code"] == "tag_group_name_taken"
    again = await client.post(
        "/v1/tags", json={"group_id": group, "name": "tea"}, headers=brand.headers()
    )
    assert again.status_code == 409 and again.json()["error"]["code"] == "tag_name_taken"
    renamed = await client.patch(
        f"/v1/tag-groups/{other}", json={"name": "interest"}, headers=brand.headers()
    )
    assert renamed.status_code == 409
    coffee = await create_tag(client, brand, group, "coffee")
    clash = await client.patch(f"/v1/tags/{coffee}", json={"name": "tea"}, headers=brand.headers())
    assert clash.status_code == 409 and clash.json()["error"]["code"] == "tag_name_taken"
    before = await snapshot(session, brand)
    unknown = await client.post(
        "/v1/tags", json={"group_id": 987654, "name": "x"}, headers=brand.headers()
    )
    assert unknown.status_code == 422 and unknown.json()["error"]["code"] == "unknown_tag_group"
    nowhere = await client.patch(
        "/v1/tag-groups/987654", json={"floor": 1}, headers=brand.headers()
    )
    assert nowhere.status_code == 404
    # Another tenant's group is unknown too.
    stranger = await make_brand(session)
    theirs = await client.post(
        "/v1/tags", json={"group_id": group, "name": "x"}, headers=stranger.headers()
    )
    assert theirs.status_code == 422
    seen = await client.get(f"/v1/tag-groups/{group}", headers=stranger.headers())
    assert seen.status_code == 404
    assert await snapshot(session, brand) == before


async def test_a_tenant_has_at_most_10000_tags(
    client: httpx.AsyncClient, session: AsyncSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    brand = await make_brand(session)
    group = await create_group(client, brand)
    await session.execute(
        text(
            "INSERT INTO tags (tenant_id, group_id, name)"
            " SELECT :t, :g, 'bulk-' || n FROM generate_series(1, 9999) n"
        ),
        {"t": brand.tenant_id, "g": group},
    )
    assert service.MAX_TAGS_PER_TENANT == 10_000
    await create_tag(client, brand, group, "the 10000th")
    beyond = await client.post(
        "/v1/tags", json={"group_id": group, "name": "one more"}, headers=brand.headers()
    )
    assert beyond.status_code == 422, beyond.text
    assert beyond.json()["error"]["code"] == "too_many_tags"


async def test_roles(client: httpx.AsyncClient, session: AsyncSession) -> None:
    brand = await make_brand(session)
    group = await create_group(client, brand)
    for role in ("analyst", "staff"):
        refused = await client.post(
            "/v1/tag-groups",
            json={"name": "n", "half_life_days": None, "floor": 0},
            headers=brand.headers(role),
        )
        assert refused.status_code == 403
        assert (
            await client.delete(f"/v1/tag-groups/{group}", headers=brand.headers(role))
        ).status_code == 403
    assert (await client.get("/v1/tag-groups")).status_code == 401


async def test_deleting_a_group_or_tag_removes_it_from_contacts(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    brand = await make_brand(session)
    group = await create_group(client, brand)
    tea, coffee = await create_tag(client, brand, group), await create_tag(client, brand, group)
    other = await create_tag(client, brand, await create_group(client, brand))
    contacts = [await make_contact(session, brand) for _ in range(3)]
    for contact in contacts:
        for tag in (tea, coffee, other):
            response = await client.post(
                f"/v1/contacts/{contact}/tags", json={"tag_id": tag}, headers=brand.headers()
            )
            assert response.status_code == 201, response.text

    assert (await client.delete(f"/v1/tags/{tea}", headers=brand.headers())).status_code == 204
    removed = [p for t, p in await tag_events(session, brand) if t == "tag.removed"]
    assert sorted(p["contact_id"] for p in removed) == sorted(map(str, contacts))
    assert {(p["tag_id"], p["reason"]) for p in removed} == {(tea, "deleted")}

    assert (
        await client.delete(f"/v1/tag-groups/{group}", headers=brand.headers())
    ).status_code == 204
    removed = [p for t, p in await tag_events(session, brand) if t == "tag.removed"]
    assert len(removed) == 6 and {p["tag_id"] for p in removed} == {tea, coffee}
    left = await client.get(f"/v1/contacts/{contacts[0]}/tags", headers=brand.headers())
    assert [i["tag_id"] for i in left.json()["items"]] == [other]


async def test_an_unknown_tag_id_in_a_path_is_404_and_a_bad_one_422(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    brand = await make_brand(session)
    assert (await client.get("/v1/tags/424242", headers=brand.headers())).status_code == 404
    assert (await client.get("/v1/tags/abc", headers=brand.headers())).status_code == 422
    assert (await client.get(f"/v1/tags/{2**63}", headers=brand.headers())).status_code == 422
    assert (
        await client.delete(f"/v1/tags/{uuid.uuid4()}", headers=brand.headers())
    ).status_code == 422
