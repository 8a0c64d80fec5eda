"""Contact tags following merges and erasure (services.tagging.tags.follow, as the
tagging pipeline calls it with a batch of events)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.tagging.facts import Changes, tag_fact
from services.tagging.tags import follow
from services.tagging.tags.writes import TagWrite, apply_tag_writes
from shared.events import Event
from tests.tagging.test_tags_support import Brand, create_group, create_tag, make_brand, tag_events

T0 = datetime(2026, 11, 1, tzinfo=UTC)
_ids = iter(range(1, 10**6))


def event(brand: Brand, kind: str, **payload: Any) -> Event:
    return Event(
        next(_ids),
        uuid.uuid4(),
        kind,
        brand.tenant_id,
        {k: str(v) for k, v in payload.items()},
        T0,
    )


async def held(
    session: AsyncSession, contact: uuid.UUID, at: datetime
) -> dict[int, tuple[float, datetime]]:
    rows = await session.execute(
        text(
            "SELECT tag_id, tag_weight(weight, weighted_at, half_life_days, :at) w, first_raised_at"
            " FROM contact_tags WHERE contact_id = :c"
        ),
        {"c": contact, "at": at},
    )
    return {r.tag_id: (r.w, r.first_raised_at) for r in rows}


async def test_a_merge_moves_tags_to_the_survivor_once(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    brand = await make_brand(session)
    group = await create_group(client, brand, half_life_days=30, floor=1)
    shared_tag, only_merged, only_survivor = [
        await create_tag(client, brand, group) for _ in range(3)
    ]
    survivor, merged = uuid.uuid4(), uuid.uuid4()
    t = brand.tenant_id
    await apply_tag_writes(
        session,
        t,
        [
            TagWrite(merged, shared_tag, "set", 30, source="rule"),
            TagWrite(merged, only_merged, "set", 5, source="rule"),
        ],
        Changes(),
        T0,
    )
    later = T0 + timedelta(days=10)
    await apply_tag_writes(
        session,
        t,
        [
            TagWrite(survivor, shared_tag, "set", 10, source="rule"),
            TagWrite(survivor, only_survivor, "set", 8, source="rule"),
        ],
        Changes(),
        later,
    )
    before = len(await tag_events(session, brand))

    now = T0 + timedelta(days=20)
    changes = Changes()
    merge = event(brand, "contact.merged", survivor_id=survivor, merged_id=merged, reason="phone")
    await follow.apply(session, [merge], changes, now)
    assert await held(session, merged, now) == {}
    tags = await held(session, survivor, now)
    # The higher current weight (30 * 0.5^(20/30) = 18.9 > 10 * 0.5^(10/30) = 7.9) with the
    # earliest first raise.
    assert tags[shared_tag] == (pytest.approx(30 * 0.5 ** (20 / 30)), T0)
    assert tags[only_merged][0] == pytest.approx(5 * 0.5 ** (20 / 30))
    assert tags[only_survivor][0] == pytest.approx(8 * 0.5 ** (10 / 30))
    assert changes.contacts(t) == {
        merged: {tag_fact(shared_tag), tag_fact(only_merged)},
        survivor: {tag_fact(shared_tag), tag_fact(only_merged)},
    }
    events = (await tag_events(session, brand))[before:]
    assert sorted((k, p["contact_id"] == str(survivor), p.get("reason")) for k, p in events) == [
        ("tag.added", True, None),
        ("tag.removed", False, "merged"),
        ("tag.removed", False, "merged"),
        ("tag.weight_changed", True, None),
    ]
    # The same merge again (redelivered) finds nothing left to move.
    await follow.apply(session, [merge], Changes(), now)
    assert len(await tag_events(session, brand)) == before + 4


async def test_a_chain_of_merges_and_an_exclusive_group_in_one_batch(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    brand = await make_brand(session)
    band = await create_group(client, brand, exclusive=True)
    young, old = await create_tag(client, brand, band), await create_tag(client, brand, band)
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await apply_tag_writes(
        session,
        brand.tenant_id,
        [
            TagWrite(a, young, "set", 9),
            TagWrite(c, old, "set", 3),
        ],
        Changes(),
        T0,
    )
    await follow.apply(
        session,
        [
            event(brand, "contact.merged", survivor_id=b, merged_id=a),
            event(brand, "contact.merged", survivor_id=c, merged_id=b),
        ],
        Changes(),
        T0,
    )
    assert await held(session, a, T0) == {} and await held(session, b, T0) == {}
    assert {tag: w for tag, (w, _) in (await held(session, c, T0)).items()} == {young: 9}
    removed = [
        (p["contact_id"], p["reason"])
        for k, p in await tag_events(session, brand)
        if k == "tag.removed"
    ]
    assert (str(a), "merged") in removed and (str(c), "exclusive") in removed
    assert [p["contact_id"] for k, p in await tag_events(session, brand) if k == "tag.added"][
        -1
    ] == str(c)


async def test_erasure_removes_the_contacts_tags(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    brand = await make_brand(session)
    group = await create_group(client, brand)
    tags = [await create_tag(client, brand, group) for _ in range(2)]
    erased, kept = uuid.uuid4(), uuid.uuid4()
    await apply_tag_writes(
        session,
        brand.tenant_id,
        [TagWrite(contact, tag, "set", 2) for contact in (erased, kept) for tag in tags],
        Changes(),
        T0,
    )
    changes = Changes()
    await follow.apply(
        session, [event(brand, "contact.erased", contact_id=erased, pseudonym="x")], changes, T0
    )
    assert await held(session, erased, T0) == {}
    assert set(await held(session, kept, T0)) == set(tags)
    assert changes.contacts(brand.tenant_id) == {erased: {tag_fact(t) for t in tags}}
    removed = [p for k, p in await tag_events(session, brand) if k == "tag.removed"]
    assert sorted((p["tag_id"], p["reason"]) for p in removed) == [
        (t, "erased") for t in sorted(tags)
    ]
    # Other events in the batch are not this part's.
    await follow.apply(session, [event(brand, "order.paid", contact_id=kept)], Changes(), T0)
    assert set(await held(session, kept, T0)) == set(tags)


async def test_the_pipeline_moves_tags_on_a_merge(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    from services.tagging import pipeline

    brand = await make_brand(session)
    tag = await create_tag(client, brand, await create_group(client, brand))
    survivor, merged = uuid.uuid4(), uuid.uuid4()
    await session.execute(
        text("INSERT INTO tagging_profiles (tenant_id, contact_id) VALUES (:t, :s), (:t, :m)"),
        {"t": brand.tenant_id, "s": survivor, "m": merged},
    )
    await apply_tag_writes(
        session, brand.tenant_id, [TagWrite(merged, tag, "set", 3)], Changes(), T0
    )
    merge = event(brand, "contact.merged", survivor_id=survivor, merged_id=merged, reason="phone")
    await pipeline.apply_events(session, [merge])
    assert set(await held(session, survivor, T0)) == {tag}
    assert await held(session, merged, T0) == {}
