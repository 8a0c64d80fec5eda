"""The tag-rules API: create, list, read, patch, pause, resume, delete, dry-run; roles;
bad rules refused with 422 naming the field and nothing changed."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.tagging import clock
from shared.db import unit_of_work
from shared.runtime import Runtime
from tests.helpers import bearer, make_key, make_tenant
from tests.tagging.test_rules_support import fire, make_group, make_tag, record

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


class Brand:
    def __init__(self, tenant_id: uuid.UUID, keys: dict[str, str]) -> None:
        self.tenant_id = tenant_id
        self.keys = keys

    def headers(self, role: str = "operator") -> dict[str, str]:
        return bearer(self.keys[role])


async def make_brand(session: AsyncSession) -> Brand:
    tenant = await make_tenant(session)
    keys = {
        r: await make_key(session, tenant, r) for r in ("admin", "operator", "analyst", "staff")
    }
    return Brand(tenant.id, keys)


async def rules_snapshot(session: AsyncSession, tenant_id: uuid.UUID) -> list[Any]:
    rows = await session.execute(
        text("SELECT * FROM tag_rules WHERE tenant_id = :t ORDER BY id"), {"t": tenant_id}
    )
    return [tuple(r) for r in rows]


async def test_a_rule_is_created_read_listed_patched_paused_and_deleted(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    brand = await make_brand(session)
    tag = await make_tag(session, brand.tenant_id, await make_group(session, brand.tenant_id))
    body = {
        "name": "tea lovers",
        "event_type": "product.view",
        "where": {"category": "tea"},
        "min_count": 3,
        "window_days": 7,
        "weight": 10,
        "cap": 100,
        "target": {"tag_id": tag},
    }
    created = await client.post("/v1/tag-rules", json=body, headers=brand.headers())
    assert created.status_code == 201, created.text
    rule_id = created.json()["id"]
    got = await client.get(f"/v1/tag-rules/{rule_id}", headers=brand.headers("analyst"))
    assert got.status_code == 200
    assert got.json() | {"created_at": None, "updated_at": None} == {
        **body,
        "id": rule_id,
        "action": "raise",
        "weight": 10.0,
        "cap": 100.0,
        "status": "active",
        "default_key": None,
        "created_at": None,
        "updated_at": None,
    }
    listed = await client.get("/v1/tag-rules", headers=brand.headers("analyst"))
    assert listed.status_code == 200
    names = [r["name"] for r in listed.json()["items"]]
    assert len(names) == 5 and "tea lovers" in names, "the four defaults and this one"
    page = await client.get("/v1/tag-rules?limit=2", headers=brand.headers())
    assert len(page.json()["items"]) == 2 and page.json()["next_cursor"]
    rest = await client.get(
        f"/v1/tag-rules?limit=50&cursor={page.json()['next_cursor']}", headers=brand.headers()
    )
    assert len(rest.json()["items"]) == 3 and rest.json()["next_cursor"] is None
    views = await client.get("/v1/tag-rules?event_type=product.view", headers=brand.headers())
    assert len(views.json()["items"]) == 2

    again = await client.post("/v1/tag-rules", json=body, headers=brand.headers())
    assert again.status_code == 409 and again.json()["error"]["code"] == "rule_name_taken"

    patched = await client.patch(
        f"/v1/tag-rules/{rule_id}",
        json={"window_days": 14, "min_count": 2, "cap": None},
        headers=brand.headers(),
    )
    assert patched.status_code == 200, patched.text
    assert (patched.json()["window_days"], patched.json()["min_count"]) == (14, 2)
    assert patched.json()["cap"] is None

    paused = await client.post(f"/v1/tag-rules/{rule_id}/pause", headers=brand.headers())
    assert paused.json()["status"] == "paused"
    listed = await client.get("/v1/tag-rules?status=paused", headers=brand.headers())
    assert [r["id"] for r in listed.json()["items"]] == [rule_id]
    resumed = await client.post(f"/v1/tag-rules/{rule_id}/resume", headers=brand.headers())
    assert resumed.json()["status"] == "active"
    by_patch = await client.patch(
        f"/v1/tag-rules/{rule_id}", json={"status": "paused"}, headers=brand.headers()
    )
    assert by_patch.json()["status"] == "paused"

    deleted = await client.delete(f"/v1/tag-rules/{rule_id}", headers=brand.headers("admin"))
    assert deleted.status_code == 204
    gone = await client.get(f"/v1/tag-rules/{rule_id}", headers=brand.headers())
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "tag_rule_not_found"
    assert (
        await client.delete(f"/v1/tag-rules/{rule_id}", headers=brand.headers())
    ).status_code == 404


async def test_roles_and_tenants(client: httpx.AsyncClient, session: AsyncSession) -> None:
    brand, other = await make_brand(session), await make_brand(session)
    tag = await make_tag(session, brand.tenant_id, await make_group(session, brand.tenant_id))
    body = {"name": "x", "event_type": "share", "weight": 1, "target": {"tag_id": tag}}
    for role in ("analyst", "staff"):
        refused = await client.post("/v1/tag-rules", json=body, headers=brand.headers(role))
        assert refused.status_code == 403, role
    assert (await client.get("/v1/tag-rules", headers=brand.headers("staff"))).status_code == 403
    created = await client.post("/v1/tag-rules", json=body, headers=brand.headers("admin"))
    rule_id = created.json()["id"]
    for method, path in (
        ("GET", f"/v1/tag-rules/{rule_id}"),
        ("POST", f"/v1/tag-rules/{rule_id}/pause"),
        ("POST", f"/v1/tag-rules/{rule_id}/dry-run"),
        ("DELETE", f"/v1/tag-rules/{rule_id}"),
    ):
        answer = await client.request(method, path, headers=other.headers())
        assert answer.status_code == 404, (method, path)
    # Another tenant's tag is no tag of this one.
    foreign = await client.post(
        "/v1/tag-rules", json={**body, "name": "y"}, headers=other.headers()
    )
    assert foreign.status_code == 422
    assert foreign.json()["error"]["details"][0]["loc"] == ["body", "target", "tag_id"]
    analyst_run = await client.post(
        f"/v1/tag-rules/{rule_id}/dry-run", headers=brand.headers("analyst")
    )
    assert analyst_run.status_code == 200


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"event_type": "made.up"}, "event_type"),
        ({"event_type": "custom."}, "event_type"),
        ({"event_type": ""}, "event_type"),
        ({"target": {"tag_id": 999_999_999}}, "tag_id"),
        ({"target": {"group_id": 999_999_999, "from_property": "category"}}, "group_id"),
        ({"target": {"tag_id": 1, "group_id": 1}}, "target"),
        ({"target": {"group_id": 1}}, "target"),
        ({"min_count": 0}, "min_count"),
        ({"min_count": 2}, "window_days"),  # N > 1 needs a window
        ({"window_days": 0}, "window_days"),
        ({"window_days": 366}, "window_days"),
        ({"weight": 0}, "weight"),
        ({"weight": -5}, "weight"),
        ({"weight": 1e12}, "weight"),
        ({"weight": "10"}, "weight"),
        ({"cap": 0}, "cap"),
        ({"action": "set", "cap": 50}, "cap"),
        ({"action": "lower"}, "action"),
        ({"where": {"category": ["tea"]}}, "where"),
        ({"where": {"category": {"a": 1}}}, "where"),
        ({"where": {f"k{i}": i for i in range(11)}}, "where"),
        ({"name": ""}, "name"),
        ({"name": "n" * 101}, "name"),
        ({"status": "gone"}, "status"),
        ({"colour": "red"}, "colour"),
    ],
)
async def test_bad_rules_are_refused_naming_the_field_and_change_nothing(
    client: httpx.AsyncClient, session: AsyncSession, change: dict[str, Any], field: str
) -> None:
    brand = await make_brand(session)
    tag = await make_tag(session, brand.tenant_id, await make_group(session, brand.tenant_id))
    body = {"name": "ok", "event_type": "share", "weight": 5, "target": {"tag_id": tag}}
    listed = await client.get("/v1/tag-rules", headers=brand.headers())
    assert listed.status_code == 200
    before = await rules_snapshot(session, brand.tenant_id)
    for path in ("/v1/tag-rules", "/v1/tag-rules/dry-run"):
        refused = await client.post(path, json={**body, **change}, headers=brand.headers())
        assert refused.status_code == 422, (path, refused.text)
        error = refused.json()["error"]
        assert error["code"] == "validation_error"
        assert any(field in map(str, d["loc"]) for d in error["details"]), error
    created = await client.post("/v1/tag-rules", json=body, headers=brand.headers())
    rule_id = created.json()["id"]
    stored = await rules_snapshot(session, brand.tenant_id)
    if "colour" not in change and change != {"name": ""}:
        patch = await client.patch(f"/v1/tag-rules/{rule_id}", json=change, headers=brand.headers())
        assert patch.status_code == 422, patch.text
        assert any(field in map(str, d["loc"]) for d in patch.json()["error"]["details"])
    assert await rules_snapshot(session, brand.tenant_id) == stored
    assert len(stored) == len(before) + 1


async def test_bodies_that_are_not_rules_get_the_envelope(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    brand = await make_brand(session)
    for content in (b"{", b"[]", b'{"weight": NaN}', b"null"):
        answer = await client.post(
            "/v1/tag-rules",
            content=content,
            headers={**brand.headers(), "Content-Type": "application/json"},
        )
        assert answer.status_code in (400, 422), content
        assert set(answer.json()["error"]) == {"code", "message", "details"}
    empty_patch = await client.patch("/v1/tag-rules/1", json={}, headers=brand.headers())
    assert empty_patch.status_code == 422
    huge = await client.get("/v1/tag-rules/99999999999999999999", headers=brand.headers())
    assert huge.status_code == 422
    bad_cursor = await client.get("/v1/tag-rules?cursor=x", headers=brand.headers())
    assert bad_cursor.status_code == 422


async def test_dry_run_counts_what_a_brute_force_count_says(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    brand = await make_brand(session)
    tenant_id = brand.tenant_id
    interest = await make_group(session, tenant_id, "browsing")
    rng = random.Random(7)
    contacts = [uuid.uuid4() for _ in range(40)]
    categories = ["tea", "coffee", "", "c" * 31, None]
    events: list[tuple[uuid.UUID, str, datetime, dict[str, Any]]] = []
    for _ in range(600):
        contact = rng.choice(contacts)
        kind = "share" if rng.random() < 0.06 else "product.view"
        at = NOW - timedelta(minutes=rng.randrange(0, 20 * 24 * 60))
        props: dict[str, Any] = {"product_id": "p"}
        category = rng.choice(categories)
        if category is not None:
            props["category"] = category
        if rng.random() < 0.3:
            props["vip"] = True
        events.append((contact, kind, at, props))
        await record(session, tenant_id, contact, kind, at, props)
    # One more, in the future of `now`: not counted.
    await record(session, tenant_id, contacts[0], "share", NOW + timedelta(hours=1), {})
    merged = contacts[1]
    await session.execute(
        text(
            "INSERT INTO tagging_profiles (tenant_id, contact_id, status) VALUES (:t, :c, 'merged')"
        ),
        {"t": tenant_id, "c": merged},
    )

    def brute(
        event_type: str,
        where: dict[str, Any],
        n: int,
        days: int | None,
        prop: str | None,
    ) -> set[uuid.UUID]:
        counts: Counter[tuple[uuid.UUID, Any]] = Counter()
        for contact, kind, at, props in events:
            if kind != event_type or contact == merged:
                continue
            if days is not None and not NOW - timedelta(days=days) < at <= NOW:
                continue
            if any(props.get(k) != v for k, v in where.items()):
                continue
            value = None
            if prop is not None:
                value = props.get(prop)
                if not isinstance(value, str) or not 1 <= len(value) <= 30:
                    continue
            counts[(contact, value)] += 1
        return {contact for (contact, _), c in counts.items() if c >= n}

    cases = [
        ("product.view", {}, 3, 7, "category"),
        ("product.view", {"vip": True}, 2, 10, None),
        ("product.view", {"category": "tea"}, 4, 14, None),
        ("share", {}, 1, None, None),
        ("share", {}, 2, 10, None),
    ]
    with clock.use(lambda: NOW):
        for event_type, where, n, days, prop in cases:
            target: dict[str, Any] = (
                {"group_id": interest, "from_property": prop}
                if prop
                else {"tag_id": await make_tag(session, tenant_id, interest)}
            )
            body = {
                "name": f"r-{uuid.uuid4().hex[:6]}",
                "event_type": event_type,
                "where": where,
                "min_count": n,
                "window_days": days,
                "weight": 1,
                "target": target,
            }
            expected = brute(event_type, where, n, days, prop)
            assert 0 < len(expected) < 35, ("a case that tells counts apart", len(expected))
            unsaved = await client.post(
                "/v1/tag-rules/dry-run", json=body, headers=brand.headers("analyst")
            )
            assert unsaved.status_code == 200, unsaved.text
            assert unsaved.json()["contacts"] == len(expected), body
            sample = [uuid.UUID(c) for c in unsaved.json()["sample"]]
            assert sample == sorted(expected)[:20]
            created = await client.post("/v1/tag-rules", json=body, headers=brand.headers())
            saved = await client.post(
                f"/v1/tag-rules/{created.json()['id']}/dry-run", headers=brand.headers()
            )
            assert saved.json() == unsaved.json()


async def test_a_retried_create_answers_the_first_and_racing_names_conflict(
    committed: Runtime, committed_client: httpx.AsyncClient
) -> None:
    async with unit_of_work(committed.sessionmaker) as session:
        brand = await make_brand(session)
        tag = await make_tag(session, brand.tenant_id, await make_group(session, brand.tenant_id))
    body = {"name": "sharers", "event_type": "share", "weight": 3, "target": {"tag_id": tag}}
    headers = {**brand.headers(), "Idempotency-Key": "create-sharers"}
    first = await committed_client.post("/v1/tag-rules", json=body, headers=headers)
    retried = await committed_client.post("/v1/tag-rules", json=body, headers=headers)
    assert first.status_code == retried.status_code == 201
    assert retried.json() == first.json()
    assert retried.headers.get("Idempotent-Replayed") == "true"
    other = await committed_client.post(
        "/v1/tag-rules", json={**body, "name": "other"}, headers=headers
    )
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_reused"

    racing = await asyncio.gather(
        *(
            committed_client.post(
                "/v1/tag-rules", json={**body, "name": "raced"}, headers=brand.headers()
            )
            for _ in range(4)
        )
    )
    assert sorted(r.status_code for r in racing) == [201, 409, 409, 409]
    async with committed.engine.connect() as conn:
        names = (
            await conn.execute(
                text("SELECT name FROM tag_rules WHERE tenant_id = :t AND default_key IS NULL"),
                {"t": brand.tenant_id},
            )
        ).scalars()
        assert sorted(names) == ["raced", "sharers"]


async def test_a_rules_firings_and_skips_are_listed(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    brand = await make_brand(session)
    group = await make_group(session, brand.tenant_id)
    created = await client.post(
        "/v1/tag-rules",
        json={
            "name": "by category",
            "event_type": "product.view",
            "weight": 2,
            "target": {"group_id": group, "from_property": "category"},
        },
        headers=brand.headers(),
    )
    rule_id = created.json()["id"]
    contact = uuid.uuid4()
    views = [
        await record(
            session, brand.tenant_id, contact, "product.view", NOW, {"product_id": "p", **props}
        )
        for props in ({"category": "tea"}, {"category": "x" * 31}, {}, {"category": "tea"})
    ]
    await fire(session, views, NOW)
    path = f"/v1/tag-rules/{rule_id}/firings"
    listed = await client.get(path, headers=brand.headers("analyst"))
    assert listed.status_code == 200, listed.text
    items = listed.json()["items"]
    assert [(i["source_event_id"], i["outcome"], i["reason"]) for i in items] == [
        (str(views[0].source_event_id), "fired", None),
        (str(views[1].source_event_id), "skipped", "tag_name_too_long"),
        (str(views[2].source_event_id), "skipped", "property_missing"),
        (str(views[3].source_event_id), "fired", None),
    ]
    assert items[0]["tag_id"] == items[3]["tag_id"] is not None and items[1]["tag_id"] is None
    first = await client.get(f"{path}?limit=3", headers=brand.headers())
    assert len(first.json()["items"]) == 3
    rest = await client.get(f"{path}?cursor={first.json()['next_cursor']}", headers=brand.headers())
    assert [i["id"] for i in rest.json()["items"]] == [items[3]["id"]]
    skipped = await client.get(f"{path}?outcome=skipped", headers=brand.headers())
    assert [i["reason"] for i in skipped.json()["items"]] == [
        "tag_name_too_long",
        "property_missing",
    ]
    other = await make_brand(session)
    assert (await client.get(path, headers=other.headers())).status_code == 404
    assert (await client.get(path, headers=brand.headers("staff"))).status_code == 403
