"""The segments API over HTTP: saving rules (bad ones refused with the failing path and
nothing saved), members, previews, explanations, static lists, roles and scope."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.tagging import clock
from shared.models import Tenant
from tests.helpers import bearer, make_key, make_tenant
from tests.tagging.test_segments_support import (
    add_event,
    add_profile,
    days,
    make_tags,
    set_tag,
)

NOW = datetime(2026, 11, 20, 4, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def fixed_clock() -> object:
    with clock.use(lambda: NOW):
        yield


class Brand:
    def __init__(self, tenant: Tenant, keys: dict[str, str]) -> None:
        self.tenant = tenant
        self.keys = keys

    def h(self, role: str = "operator") -> dict[str, str]:
        return bearer(self.keys[role])


@pytest.fixture
async def brand(session: AsyncSession) -> Brand:
    tenant = await make_tenant(session)
    keys = {
        r: await make_key(session, tenant, r) for r in ("admin", "operator", "analyst", "staff")
    }
    return Brand(tenant, keys)


async def _count(session: AsyncSession, table: str) -> int:
    return int(await session.scalar(text(f"SELECT count(*) FROM {table}")) or 0)


async def test_a_segment_from_its_creation_to_its_explanation(
    client: httpx.AsyncClient, session: AsyncSession, brand: Brand
) -> None:
    t = brand.tenant.id
    [tag] = await make_tags(session, t, 1)
    buyer = await add_profile(session, t, created_at=NOW - days(9), with_contact=True)
    once = await add_profile(session, t, created_at=NOW - days(9), with_contact=True)
    await add_event(session, t, buyer, "order.paid", NOW - days(2))
    await add_event(session, t, buyer, "order.paid", NOW - days(1))
    await add_event(session, t, once, "order.paid", NOW - days(1))
    await set_tag(session, t, buyer, tag, 15, NOW)
    rule = {
        "all": [
            {"event": "order.paid", "count": {"gte": 2}, "within_days": 30},
            {"tag": tag, "min_weight": 10},
        ]
    }
    preview = await client.post(
        "/v1/segments/preview", json={"rule": rule}, headers=brand.h("analyst")
    )
    assert preview.status_code == 200, preview.text
    assert preview.json() == {"count": 1, "sample": [str(buyer)]}
    assert await _count(session, "segments") == 0

    created = await client.post(
        "/v1/segments", json={"name": "repeat buyers", "rule": rule}, headers=brand.h()
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["status"] == "ready" and body["kind"] == "dynamic"
    segment_id = body["id"]

    shown = (await client.get(f"/v1/segments/{segment_id}", headers=brand.h("analyst"))).json()
    assert shown["member_count"] == 1
    assert shown["last_built_at"] is not None and shown["error"] is None
    page = (await client.get(f"/v1/segments/{segment_id}/members", headers=brand.h())).json()
    assert page == {
        "items": [{"contact_id": str(buyer), "entered_at": page["items"][0]["entered_at"]}],
        "next_cursor": None,
    }

    why = await client.get(
        f"/v1/segments/{segment_id}/explain", params={"contact_id": str(once)}, headers=brand.h()
    )
    assert why.status_code == 200, why.text
    assert why.json()["member"] is False
    assert [
        (leaf["path"], leaf["holds"], leaf["value"], leaf["text"]) for leaf in why.json()["leaves"]
    ] == [
        ("all[0]", False, 1, "order.paid 1 time in 30 days, needs ≥2"),
        ("all[1]", False, None, f"tag {tag} not held, needs ≥10"),
    ]
    why = await client.get(
        f"/v1/segments/{segment_id}/explain", params={"contact_id": str(buyer)}, headers=brand.h()
    )
    assert why.json()["member"] is True and why.json()["listed"] is True
    assert [leaf["holds"] for leaf in why.json()["leaves"]] == [True, True]

    listed = (await client.get("/v1/segments", headers=brand.h("staff"))).json()
    assert [s["id"] for s in listed["items"]] == [segment_id]

    # A new rule: rebuilt, only the difference changes.
    patched = await client.patch(
        f"/v1/segments/{segment_id}",
        json={"rule": {"event": "order.paid", "within_days": 30}},
        headers=brand.h(),
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["version"] == 2 and patched.json()["member_count"] == 2
    events = await session.execute(
        text(
            "SELECT type, payload->>'contact_id' FROM outbox_events "
            "WHERE type LIKE 'segment.%' ORDER BY id"
        )
    )
    assert [tuple(e) for e in events] == [
        ("segment.entered", str(buyer)),
        ("segment.entered", str(once)),
    ]
    deleted = await client.delete(f"/v1/segments/{segment_id}", headers=brand.h())
    assert deleted.status_code == 204
    assert await _count(session, "segment_members") == 0


@pytest.mark.parametrize(
    ("rule", "path"),
    [
        ({"all": [{"tag": 1}, {"field": "channel", "eq": "x"}, {"tag": "a"}]}, "all[2].tag"),
        ({"all": [{"any": [{"tag": 999999}]}]}, "all[0].any[0].tag"),
        ({"event": "order.paid", "count": {"gt": 2}}, "count.gt"),
        ({"event": "order.paid", "within_days": 0}, "within_days"),
        ({"field": "shoe_size", "eq": 42}, "field"),
        ({"field": "lifecycle_stage", "in": ["active", "asleep"]}, "in[1]"),
        ({"field": "channel", "gte": 3}, "gte"),
        ({"not": [{"tag": 1}]}, "not"),
        ({"segment": 424242}, "segment"),
        ({"nothing": 1}, "rule"),
        ({"all": [{"in_group": ""}]}, "all[0].in_group"),
    ],
)
async def test_bad_rules_are_refused_with_their_path_and_nothing_is_saved(
    client: httpx.AsyncClient,
    session: AsyncSession,
    brand: Brand,
    rule: dict[str, object],
    path: str,
) -> None:
    await make_tags(session, brand.tenant.id, 1)  # the tag ids of other tests' tenants differ
    response = await client.post(
        "/v1/segments", json={"name": "bad", "rule": rule}, headers=brand.h()
    )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_rule"
    assert error["details"] == {"path": path}, error
    assert await _count(session, "segments") == 0
    assert await _count(session, "segment_members") == 0
    preview = await client.post("/v1/segments/preview", json={"rule": rule}, headers=brand.h())
    assert preview.status_code == 422


async def test_cycles_and_segments_in_use_are_refused(
    client: httpx.AsyncClient, session: AsyncSession, brand: Brand
) -> None:
    await add_profile(session, brand.tenant.id, created_at=NOW - days(1))
    first = (
        await client.post(
            "/v1/segments", json={"name": "a", "rule": {"all": []}}, headers=brand.h()
        )
    ).json()["id"]
    second = (
        await client.post(
            "/v1/segments", json={"name": "b", "rule": {"segment": first}}, headers=brand.h()
        )
    ).json()["id"]
    cycle = await client.patch(
        f"/v1/segments/{first}", json={"rule": {"not": {"segment": second}}}, headers=brand.h()
    )
    assert cycle.status_code == 422
    assert cycle.json()["error"]["details"] == {"path": "not.segment"}
    itself = await client.patch(
        f"/v1/segments/{first}", json={"rule": {"segment": first}}, headers=brand.h()
    )
    assert itself.status_code == 422
    shown = (await client.get(f"/v1/segments/{first}", headers=brand.h())).json()
    assert shown["rule"] == {"all": []} and shown["version"] == 1
    in_use = await client.delete(f"/v1/segments/{first}", headers=brand.h())
    assert in_use.status_code == 409
    assert in_use.json()["error"]["code"] == "segment_in_use"
    taken = await client.post(
        "/v1/segments", json={"name": "a", "rule": {"all": []}}, headers=brand.h()
    )
    assert taken.status_code == 409 and taken.json()["error"]["code"] == "name_taken"
    neither = await client.post("/v1/segments", json={"name": "c"}, headers=brand.h())
    assert neither.status_code == 422


async def test_roles_and_the_staff_scope(
    client: httpx.AsyncClient, session: AsyncSession, brand: Brand
) -> None:
    t = brand.tenant.id
    mine = await add_profile(
        session, t, created_at=NOW - days(1), owner="staff-1", with_contact=True
    )
    theirs = await add_profile(
        session, t, created_at=NOW - days(1), owner="staff-2", with_contact=True
    )
    refused = await client.post(
        "/v1/segments", json={"name": "x", "rule": {"all": []}}, headers=brand.h("analyst")
    )
    assert refused.status_code == 403
    refused = await client.post(
        "/v1/segments", json={"name": "x", "rule": {"all": []}}, headers=brand.h("staff")
    )
    assert refused.status_code == 403
    segment_id = (
        await client.post(
            "/v1/segments", json={"name": "everyone", "rule": {"all": []}}, headers=brand.h()
        )
    ).json()["id"]
    assert (await client.get(f"/v1/segments/{segment_id}", headers=brand.h())).json()[
        "member_count"
    ] == 2
    staff = brand.h("staff")
    assert (await client.get(f"/v1/segments/{segment_id}", headers=staff)).json()[
        "member_count"
    ] == 1
    page = (await client.get(f"/v1/segments/{segment_id}/members", headers=staff)).json()
    assert [m["contact_id"] for m in page["items"]] == [str(mine)]
    preview = (
        await client.post("/v1/segments/preview", json={"rule": {"all": []}}, headers=staff)
    ).json()
    assert preview == {"count": 1, "sample": [str(mine)]}
    ok = await client.get(
        f"/v1/segments/{segment_id}/explain", params={"contact_id": str(mine)}, headers=staff
    )
    assert ok.status_code == 200 and ok.json()["member"] is True
    hidden = await client.get(
        f"/v1/segments/{segment_id}/explain", params={"contact_id": str(theirs)}, headers=staff
    )
    assert hidden.status_code == 404
    assert hidden.json()["error"]["code"] == "not_found"
    other = await make_tenant(session)
    foreign_key = await make_key(session, other, "admin")
    assert (
        await client.get(f"/v1/segments/{segment_id}", headers=bearer(foreign_key))
    ).status_code == 404


async def test_static_segments_from_lists_and_csv(
    client: httpx.AsyncClient, session: AsyncSession, brand: Brand
) -> None:
    t = brand.tenant.id
    a, b, c = [await add_profile(session, t, created_at=NOW - days(1)) for _ in range(3)]
    unknown = uuid.uuid4()
    refused = await client.post(
        "/v1/segments",
        json={"name": "vip", "contact_ids": [str(a), str(unknown)]},
        headers=brand.h(),
    )
    assert refused.status_code == 422
    assert refused.json()["error"]["details"] == {"path": "contact_ids[1]"}
    assert await _count(session, "segments") == 0
    created = await client.post(
        "/v1/segments", json={"name": "vip", "contact_ids": [str(a)]}, headers=brand.h()
    )
    assert created.status_code == 201 and created.json()["kind"] == "static"
    segment_id = created.json()["id"]
    added = await client.post(
        f"/v1/segments/{segment_id}/members",
        json={"contact_ids": [str(a), str(b)]},
        headers=brand.h(),
    )
    assert added.json() == {"added": 1, "already_members": 1}
    csv = f"contact_id,note\n{c}\nnot-a-uuid\n{unknown}\n{a}\n"
    imported = await client.post(
        f"/v1/segments/{segment_id}/members/import",
        content=csv.encode(),
        headers={**brand.h(), "Content-Type": "text/csv"},
    )
    assert imported.status_code == 200, imported.text
    assert imported.json() == {
        "rows": 4,
        "added": 1,
        "already_members": 1,
        "rejected": [
            {"line": 3, "reason": "contact_id is not a UUID"},
            {"line": 4, "reason": "not a live contact of the tenant"},
        ],
    }
    wrong_type = await client.post(
        f"/v1/segments/{segment_id}/members/import",
        content=csv.encode(),
        headers={**brand.h(), "Content-Type": "application/json"},
    )
    assert wrong_type.status_code == 415
    removed = await client.request(
        "DELETE",
        f"/v1/segments/{segment_id}/members",
        json={"contact_ids": [str(b)]},
        headers=brand.h(),
    )
    assert removed.json() == {"removed": 1, "not_members": 0}
    shown = (await client.get(f"/v1/segments/{segment_id}", headers=brand.h())).json()
    assert shown["member_count"] == 2
    events = await session.execute(
        text(
            "SELECT type, payload->>'contact_id' FROM outbox_events "
            "WHERE type LIKE 'segment.%' ORDER BY id"
        )
    )
    assert [tuple(e) for e in events] == [
        ("segment.entered", str(a)),
        ("segment.entered", str(b)),
        ("segment.entered", str(c)),
        ("segment.left", str(b)),
    ]
    rebuild = await client.post(f"/v1/segments/{segment_id}/rebuild", headers=brand.h())
    assert rebuild.status_code == 422


async def test_member_pages_and_the_csv_export(
    committed_client: httpx.AsyncClient, committed: object
) -> None:
    from shared.db import unit_of_work
    from shared.runtime import Runtime

    assert isinstance(committed, Runtime)
    async with unit_of_work(committed.sessionmaker) as session:
        tenant = await make_tenant(session)
        key = await make_key(session, tenant, "operator")
        ids = [await add_profile(session, tenant.id, created_at=NOW - days(1)) for _ in range(5)]
    headers = bearer(key)
    created = await committed_client.post(
        "/v1/segments", json={"name": "all", "rule": {"all": []}}, headers=headers
    )
    segment_id = created.json()["id"]
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, str | int] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = (
            await committed_client.get(
                f"/v1/segments/{segment_id}/members", params=params, headers=headers
            )
        ).json()
        seen += [m["contact_id"] for m in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(str(i) for i in ids) and len(seen) == 5
    exported = await committed_client.get(f"/v1/segments/{segment_id}/members.csv", headers=headers)
    assert exported.status_code == 200
    assert exported.headers["content-type"].startswith("text/csv")
    lines = exported.text.strip().splitlines()
    assert lines[0] == "contact_id,entered_at"
    assert sorted(line.split(",")[0] for line in lines[1:]) == sorted(str(i) for i in ids)
    bad_cursor = await committed_client.get(
        f"/v1/segments/{segment_id}/members", params={"cursor": "x"}, headers=headers
    )
    assert bad_cursor.status_code == 422
