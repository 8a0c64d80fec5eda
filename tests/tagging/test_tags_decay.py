"""Decay over a simulated clock: weights halve every half-life without rewrites, a tag
below its group's floor drops at the sweep once, manual tags decay only when their
group says so, and a group's new decay settings re-anchor its contact tags."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.tagging import clock
from services.tagging.facts import Changes
from services.tagging.tags import tasks
from services.tagging.tags.writes import TagWrite, apply_tag_writes
from shared.scheduler import ScheduledWork
from tests.tagging.test_tags_support import (
    Brand,
    create_group,
    create_tag,
    make_brand,
    make_contact,
    tag_events,
)

T0 = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)


def at(days: float) -> datetime:
    return T0 + timedelta(days=days)


async def weight_of(
    client: httpx.AsyncClient, brand: Brand, contact: uuid.UUID, days: float
) -> list[float]:
    with clock.use(lambda: at(days)):
        response = await client.get(f"/v1/contacts/{contact}/tags", headers=brand.headers())
    assert response.status_code == 200, response.text
    return [item["weight"] for item in response.json()["items"]]


async def sweep(session: AsyncSession, days: float) -> None:
    now = at(days)
    work = ScheduledWork(0, None, "drop_decayed_tags", {}, now, 0, now)
    with clock.use(lambda: now):
        await tasks.drop_decayed_tags(session, work)


async def test_a_weight_halves_every_half_life_and_drops_below_the_floor_once(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    brand = await make_brand(session)
    group = await create_group(client, brand, half_life_days=30, floor=15, decay_manual=True)
    tag = await create_tag(client, brand, group)
    contact = await make_contact(session, brand)
    with clock.use(lambda: T0):
        response = await client.post(
            f"/v1/contacts/{contact}/tags",
            json={"tag_id": tag, "weight": 40},
            headers=brand.headers(),
        )
    assert response.status_code == 201, response.text
    stored = (await session.execute(text("SELECT weight, drops_at FROM contact_tags"))).one()
    assert await weight_of(client, brand, contact, 30) == [pytest.approx(20)]
    assert await weight_of(client, brand, contact, 60) == [pytest.approx(10)]
    # 40 * 0.5^(t/30) = 15 at t = 30 * log2(40/15) = 42.45 days.
    assert stored.drops_at == pytest.approx(at(42.45), abs=timedelta(hours=1))
    assert stored.weight == 40, "decay never rewrites the row"

    await sweep(session, 42)
    assert await weight_of(client, brand, contact, 42) == [pytest.approx(40 * 0.5 ** (42 / 30))]
    assert [t for t, _ in await tag_events(session, brand)] == ["tag.added"]
    await sweep(session, 43)
    await sweep(session, 44)
    assert await weight_of(client, brand, contact, 44) == []
    events = await tag_events(session, brand)
    assert [t for t, _ in events] == ["tag.added", "tag.removed"]
    assert events[-1][1]["reason"] == "decayed" and events[-1][1]["tag_id"] == tag
    history = (
        await session.execute(text("SELECT action, cause FROM contact_tag_history ORDER BY id"))
    ).all()
    assert [(h.action, h.cause.get("reason")) for h in history] == [
        ("added", None),
        ("removed", "decayed"),
    ]


async def test_the_sweep_takes_only_what_is_due(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    brand = await make_brand(session)
    fast = await create_tag(
        client, brand, await create_group(client, brand, half_life_days=1, floor=5)
    )
    slow = await create_tag(
        client, brand, await create_group(client, brand, half_life_days=100, floor=5)
    )
    contacts = [uuid.uuid4() for _ in range(50)]
    writes = [TagWrite(c, t, "set", 10, source="rule") for c in contacts for t in (fast, slow)]
    await apply_tag_writes(session, brand.tenant_id, writes, Changes(), T0)
    await sweep(session, 2)
    removed = [p for t, p in await tag_events(session, brand) if t == "tag.removed"]
    assert len(removed) == 50 and {p["tag_id"] for p in removed} == {fast}
    left = await session.scalar(
        text("SELECT count(*) FROM contact_tags WHERE tag_id = :t"), {"t": slow}
    )
    assert left == 50


async def test_manual_tags_decay_only_when_their_group_says_so(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    brand = await make_brand(session)
    group = await create_group(client, brand, half_life_days=30, floor=1)
    manual, by_rule = await create_tag(client, brand, group), await create_tag(client, brand, group)
    contact = await make_contact(session, brand)
    with clock.use(lambda: T0):
        response = await client.post(
            f"/v1/contacts/{contact}/tags",
            json={"tag_id": manual, "weight": 40},
            headers=brand.headers(),
        )
        assert response.status_code == 201
    await apply_tag_writes(
        session,
        brand.tenant_id,
        [TagWrite(contact, by_rule, "raise", 40, source="rule")],
        Changes(),
        T0,
    )
    assert await weight_of(client, brand, contact, 30) == [40, pytest.approx(20)]

    # From now on the group's manual tags decay too: from their weight now.
    with clock.use(lambda: at(30)):
        patched = await client.patch(
            f"/v1/tag-groups/{group}", json={"decay_manual": True}, headers=brand.headers()
        )
    assert patched.status_code == 200, patched.text
    assert await weight_of(client, brand, contact, 60) == [pytest.approx(20), pytest.approx(10)]


async def test_a_groups_new_half_life_and_floor_apply_from_now(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    brand = await make_brand(session)
    group = await create_group(client, brand, half_life_days=30, floor=1)
    tag = await create_tag(client, brand, group)
    contact = await make_contact(session, brand)
    await apply_tag_writes(
        session, brand.tenant_id, [TagWrite(contact, tag, "set", 40, source="rule")], Changes(), T0
    )
    with clock.use(lambda: at(30)):
        patched = await client.patch(
            f"/v1/tag-groups/{group}", json={"half_life_days": 10}, headers=brand.headers()
        )
    assert patched.status_code == 200
    assert await weight_of(client, brand, contact, 40) == [pytest.approx(10)]
    assert await weight_of(client, brand, contact, 30) == [pytest.approx(20)]

    # A floor above the current weight: the tag drops at the next sweep.
    with clock.use(lambda: at(40)):
        raised = await client.patch(
            f"/v1/tag-groups/{group}", json={"floor": 12}, headers=brand.headers()
        )
    assert raised.status_code == 200
    await sweep(session, 40.001)
    assert await weight_of(client, brand, contact, 41) == []
    assert [p["reason"] for t, p in await tag_events(session, brand) if t == "tag.removed"] == [
        "decayed"
    ]

    # No decay at all: nothing drops.
    other = await create_tag(client, brand, group)
    await apply_tag_writes(
        session,
        brand.tenant_id,
        [TagWrite(contact, other, "set", 20, source="rule")],
        Changes(),
        at(41),
    )
    with clock.use(lambda: at(41)):
        await client.patch(
            f"/v1/tag-groups/{group}", json={"half_life_days": None}, headers=brand.headers()
        )
    await sweep(session, 400)
    assert await weight_of(client, brand, contact, 400) == [20]


async def test_weights_far_past_their_half_life_read_as_zero(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    brand = await make_brand(session)
    group = await create_group(client, brand, half_life_days=0.0001, floor=0)
    tag = await create_tag(client, brand, group)
    contact = await make_contact(session, brand)
    await apply_tag_writes(
        session, brand.tenant_id, [TagWrite(contact, tag, "set", 10, source="rule")], Changes(), T0
    )
    assert await weight_of(client, brand, contact, 365) == [0.0]
    tiny = await client.post(
        "/v1/tag-groups",
        json={"name": "tiny", "half_life_days": 1e-9, "floor": 1e-300},
        headers=brand.headers(),
    )
    assert tiny.status_code == 422
    assert {d["loc"][-1] for d in tiny.json()["error"]["details"]} == {"half_life_days", "floor"}
