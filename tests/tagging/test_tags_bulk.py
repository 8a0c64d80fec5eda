"""Bulk tagging over HTTP: by a list of ids, by a segment's members, by a CSV file, and
the removals; idempotent (the same request again changes and publishes nothing);
100,000 contacts in a few statements."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncSession

from services.tagging import clock
from services.tagging.facts import Changes
from services.tagging.tags.writes import TagWrite, apply_tag_writes
from tests.tagging.test_tags_support import (
    create_group,
    create_tag,
    make_brand,
    make_contacts,
    snapshot,
    tag_events,
)


async def holders(session: AsyncSession, tag_id: int) -> dict[uuid.UUID, tuple[float, str]]:
    rows = await session.execute(
        text("SELECT contact_id, weight, source FROM contact_tags WHERE tag_id = :t"), {"t": tag_id}
    )
    return {r.contact_id: (r.weight, r.source) for r in rows}


async def test_bulk_by_list_is_idempotent_and_reports_unknown_ids(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    brand = await make_brand(session)
    tag = await create_tag(client, brand, await create_group(client, brand))
    contacts = await make_contacts(session, brand, 5)
    stranger = uuid.uuid4()
    url = f"/v1/tags/{tag}/contacts"
    body: dict[str, Any] = {"contact_ids": [str(c) for c in [*contacts, stranger, contacts[0]]]}

    first = await client.post(url, json=body, headers=brand.headers())
    assert first.status_code == 200, first.text
    assert first.json() == {
        "added": 5,
        "updated": 0,
        "removed": 0,
        "unchanged": 0,
        "unknown": [str(stranger)],
    }
    published = len(await tag_events(session, brand))
    assert published == 5
    state = await snapshot(session, brand)
    second = await client.post(url, json=body, headers=brand.headers())
    assert second.json() == {
        "added": 0,
        "updated": 0,
        "removed": 0,
        "unchanged": 5,
        "unknown": [str(stranger)],
    }
    assert await snapshot(session, brand) == state

    weighted = await client.post(url, json={**body, "weight": 7}, headers=brand.headers())
    assert weighted.json()["updated"] == 5
    assert set((await holders(session, tag)).values()) == {(7.0, "manual")}
    again = await client.post(url, json={**body, "weight": 7}, headers=brand.headers())
    assert again.json()["unchanged"] == 5 and again.json()["updated"] == 0

    removal = {"contact_ids": [str(c) for c in contacts[:3]]}
    removed = await client.post(f"{url}/remove", json=removal, headers=brand.headers())
    assert removed.json() == {"added": 0, "updated": 0, "removed": 3, "unchanged": 0, "unknown": []}
    removed_again = await client.post(f"{url}/remove", json=removal, headers=brand.headers())
    assert removed_again.json()["removed"] == 0 and removed_again.json()["unchanged"] == 3
    assert set(await holders(session, tag)) == set(contacts[3:])
    reasons = [p["reason"] for t, p in await tag_events(session, brand) if t == "tag.removed"]
    assert reasons == ["manual"] * 3


async def test_bulk_by_segment(client: httpx.AsyncClient, session: AsyncSession) -> None:
    brand = await make_brand(session)
    tag = await create_tag(client, brand, await create_group(client, brand))
    members = await make_contacts(session, brand, 4)
    outsider = (await make_contacts(session, brand, 1))[0]
    segment = await session.scalar(
        text(
            "INSERT INTO segments (tenant_id, name, kind, status)"
            " VALUES (:t, 'vip', 'static', 'ready') RETURNING id"
        ),
        {"t": brand.tenant_id},
    )
    await session.execute(
        text(
            "INSERT INTO segment_members (segment_id, contact_id, tenant_id)"
            " SELECT :s, unnest(CAST(:c AS uuid[])), :t"
        ),
        {"s": segment, "c": members, "t": brand.tenant_id},
    )
    url = f"/v1/tags/{tag}/contacts"
    tagged = await client.post(
        url, json={"segment_id": segment, "weight": 3}, headers=brand.headers()
    )
    assert tagged.status_code == 200, tagged.text
    assert tagged.json()["added"] == 4
    assert set(await holders(session, tag)) == set(members) and outsider not in await holders(
        session, tag
    )
    twice = await client.post(
        url, json={"segment_id": segment, "weight": 3}, headers=brand.headers()
    )
    assert twice.json()["unchanged"] == 4
    untagged = await client.post(
        f"{url}/remove", json={"segment_id": segment}, headers=brand.headers()
    )
    assert untagged.json()["removed"] == 4

    unknown = await client.post(url, json={"segment_id": 987654}, headers=brand.headers())
    assert unknown.status_code == 422 and unknown.json()["error"]["code"] == "unknown_segment"
    for bad in (
        {},
        {"segment_id": segment, "contact_ids": [str(members[0])]},
        {"contact_ids": []},
        {"contact_ids": ["not-a-uuid"]},
        {"contact_ids": [str(members[0])], "weight": 0},
    ):
        response = await client.post(url, json=bad, headers=brand.headers())
        assert response.status_code == 422, (bad, response.text)
    assert (
        await client.post(
            "/v1/tags/987654/contacts", json={"segment_id": segment}, headers=brand.headers()
        )
    ).status_code == 404
    assert (
        await client.post(url, json={"segment_id": segment}, headers=brand.headers("analyst"))
    ).status_code == 403


async def test_bulk_by_csv(client: httpx.AsyncClient, session: AsyncSession) -> None:
    brand = await make_brand(session)
    tag = await create_tag(client, brand, await create_group(client, brand))
    a, b, c = await make_contacts(session, brand, 3)
    stranger = uuid.uuid4()
    url = f"/v1/tags/{tag}/contacts/import"
    csv_headers = {**brand.headers(), "Content-Type": "text/csv"}
    body = f"\ufeffcontact_id,weight\r\n{a},5\r\n{b},\r\n\r\n{stranger},2\r\n".encode()
    imported = await client.post(url, content=body, headers=csv_headers)
    assert imported.status_code == 200, imported.text
    assert imported.json() == {
        "added": 2,
        "updated": 0,
        "removed": 0,
        "unchanged": 0,
        "unknown": [str(stranger)],
    }
    assert await holders(session, tag) == {a: (5.0, "import"), b: (1.0, "import")}
    state = await snapshot(session, brand)
    again = await client.post(url, content=body, headers=csv_headers)
    assert again.json()["unchanged"] == 2
    assert await snapshot(session, brand) == state

    bad = f"contact_id,weight\n{c},1\nnot-a-uuid,1\n{c},heavy\n{c}\n".encode()
    refused = await client.post(url, content=bad, headers=csv_headers)
    assert refused.status_code == 422, refused.text
    error = refused.json()["error"]
    assert error["code"] == "invalid_tag_import"
    assert [r["line"] for r in error["details"]["rejected"]] == [3, 4, 5]
    assert await snapshot(session, brand) == state, "nothing applied"
    for content in (
        b"",
        b"phone\n1\n",
        b"contact_id,contact_id\n",
        b"\xff\xfe",
        b'contact_id\n"unclosed\n',
    ):
        response = await client.post(url, content=content, headers=csv_headers)
        assert response.status_code == 422, (content, response.text)
    wrong_type = await client.post(
        url, content=body, headers={**brand.headers(), "Content-Type": "application/json"}
    )
    assert wrong_type.status_code == 415
    assert await snapshot(session, brand) == state

    removal = f"contact_id\n{a}\n{c}\n".encode()
    removed = await client.post(
        f"/v1/tags/{tag}/contacts/remove/import", content=removal, headers=csv_headers
    )
    assert removed.status_code == 200, removed.text
    assert removed.json() == {"added": 0, "updated": 0, "removed": 1, "unchanged": 1, "unknown": []}
    assert set(await holders(session, tag)) == {b}


@contextmanager
def statements(session: AsyncSession) -> Iterator[list[str]]:
    seen: list[str] = []
    engine = session.bind.engine.sync_engine  # type: ignore[union-attr]

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


async def test_100000_contacts_take_a_few_statements(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    brand = await make_brand(session)
    tag = await create_tag(
        client, brand, await create_group(client, brand, half_life_days=30, floor=1)
    )
    contacts = await make_contacts(session, brand, 100_000)
    with statements(session) as seen:
        response = await client.post(
            f"/v1/tags/{tag}/contacts",
            json={"contact_ids": [str(c) for c in contacts], "weight": 2},
            headers=brand.headers(),
        )
    assert response.status_code == 200, response.text
    assert response.json()["added"] == 100_000
    touching = [s for s in seen if "contact_tag" in s or "outbox_events" in s]
    assert len(touching) <= 8, touching
    assert (
        await session.scalar(
            text("SELECT count(*) FROM contact_tags WHERE tag_id = :t"), {"t": tag}
        )
        == 100_000
    )
    assert len(await tag_events(session, brand)) == 100_000

    with statements(session) as seen:
        result = await apply_tag_writes(
            session,
            brand.tenant_id,
            [TagWrite(c, tag, "raise", 1, cap=2.5, source="rule") for c in contacts],
            Changes(),
            clock.now(),
        )
    assert result.updated == 100_000
    assert len([s for s in seen if "contact_tag" in s or "outbox_events" in s]) <= 8


async def test_the_holders_of_a_tag_page_by_contact_and_staff_see_their_own(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    brand = await make_brand(session)
    tag = await create_tag(client, brand, await create_group(client, brand))
    contacts = sorted(await make_contacts(session, brand, 5))
    await session.execute(
        text("UPDATE tagging_profiles SET owner_staff = 'staff-1' WHERE contact_id = ANY(:c)"),
        {"c": contacts[:2]},
    )
    body = {"contact_ids": [str(c) for c in contacts], "weight": 4}
    assert (
        await client.post(f"/v1/tags/{tag}/contacts", json=body, headers=brand.headers())
    ).status_code == 200
    url = f"/v1/tags/{tag}/contacts"
    first = await client.get(url, params={"limit": 3}, headers=brand.headers("analyst"))
    assert first.status_code == 200, first.text
    assert [i["contact_id"] for i in first.json()["items"]] == [str(c) for c in contacts[:3]]
    assert first.json()["items"][0]["weight"] == 4.0
    rest = await client.get(
        url, params={"limit": 3, "cursor": first.json()["next_cursor"]}, headers=brand.headers()
    )
    assert [i["contact_id"] for i in rest.json()["items"]] == [str(c) for c in contacts[3:]]
    assert rest.json()["next_cursor"] is None
    own = await client.get(url, headers=brand.headers("staff"))
    assert [i["contact_id"] for i in own.json()["items"]] == [str(c) for c in contacts[:2]]
    assert (
        await client.get("/v1/tags/987654/contacts", headers=brand.headers())
    ).status_code == 404
