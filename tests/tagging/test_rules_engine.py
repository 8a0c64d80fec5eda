"""Tag rules fired by applied events: once per source event, counts in a window, tags
derived from a property, caps, set, pause, and the defaults of SPEC §2."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

import services.tagging.tasks  # noqa: F401  (registers the handlers)
from services.tagging import clock, pipeline
from services.tagging.facts import tag_fact
from services.tagging.rules import service, targets
from shared.events import Event
from tests.helpers import make_tenant
from tests.tagging.test_rules_support import (
    add_rule,
    fire,
    firings,
    make_group,
    make_tag,
    record,
    weight,
)

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)
DAY = timedelta(days=1)


async def test_a_rule_fires_on_every_occurrence_up_to_its_cap_and_once_per_event(
    session: AsyncSession,
) -> None:
    tenant = await make_tenant(session)
    group = await make_group(session, tenant.id)
    tag = await make_tag(session, tenant.id, group)
    rule = await add_rule(
        session, tenant.id, event_type="share", weight=30, cap=100, target={"tag_id": tag}
    )
    contact = uuid.uuid4()
    shares = [await record(session, tenant.id, contact, "share", T0 + i * MIN) for i in range(4)]
    changes = await fire(session, shares, T0 + 5 * MIN)
    assert await weight(session, tenant.id, contact, tag, T0 + 5 * MIN) == 100
    assert tag_fact(tag) in changes.contacts(tenant.id)[contact]
    assert [f["outcome"] for f in await firings(session, rule)] == ["fired"] * 4
    history = await session.scalar(
        text(
            "SELECT count(*) FROM contact_tag_history WHERE tenant_id = :t AND tag_id = :g"
            " AND cause ->> 'rule_id' = :r"
        ),
        {"t": tenant.id, "g": tag, "r": str(rule)},
    )
    assert history == 4  # added 30, raised 60, 90, 100

    # The same events again (a second delivery, a replay, an overlapping batch): nothing.
    await session.execute(
        text("UPDATE contact_tags SET weight = 40 WHERE tenant_id = :t"), {"t": tenant.id}
    )
    again = await fire(session, shares, T0 + 6 * MIN)
    assert not again
    assert await weight(session, tenant.id, contact, tag, T0 + 6 * MIN) == 40
    assert len(await firings(session, rule)) == 4


async def test_the_count_in_a_window_reaches_n_then_fires_on_each_qualifying_event(
    session: AsyncSession,
) -> None:
    tenant = await make_tenant(session)
    group = await make_group(session, tenant.id)
    tag = await make_tag(session, tenant.id, group)
    rule = await add_rule(
        session,
        tenant.id,
        event_type="product.view",
        where={"category": "tea"},
        min_count=3,
        window_days=7,
        weight=10,
        cap=25,
        target={"tag_id": tag},
    )
    contact, other = uuid.uuid4(), uuid.uuid4()
    now = T0

    async def view(who: uuid.UUID, at: datetime, category: str = "tea") -> float | None:
        nonlocal now
        now = at + MIN
        event = await record(
            session, tenant.id, who, "product.view", at, {"category": category, "product_id": "p"}
        )
        await fire(session, [event], now)
        return await weight(session, tenant.id, who, tag, now)

    assert await view(contact, T0) is None
    assert await view(contact, T0 + DAY, "coffee") is None  # not tea: not counted
    assert await view(contact, T0 + 2 * DAY) is None  # 2 tea views
    assert await view(other, T0 + 2 * DAY) is None  # another contact's do not count
    assert await view(contact, T0 + 3 * DAY) == 10  # the 3rd tea view in 7 days
    assert await view(contact, T0 + 4 * DAY) == 20  # and each one after it
    assert await view(contact, T0 + 5 * DAY) == 25  # up to the cap
    # 10 days on, the window holds one tea view: nothing more.
    assert await view(contact, T0 + 15 * DAY) == 25
    outcomes = [f["outcome"] for f in await firings(session, rule)]
    assert outcomes == ["fired"] * 3

    # Three views in one batch, the third on the same minute as the second: only the
    # events that bring the count to 3 (in occurrence order) fire.
    third = uuid.uuid4()
    batch = [
        await record(
            session, tenant.id, third, "product.view", T0 + 20 * DAY + i * MIN, {"category": "tea"}
        )
        for i in (0, 1, 1, 2)
    ]
    await fire(session, batch, T0 + 21 * DAY)
    fired = {f["source_event_id"] for f in await firings(session, rule) if f["contact_id"] == third}
    assert fired == {batch[2].source_event_id, batch[3].source_event_id}
    assert await weight(session, tenant.id, third, tag, T0 + 21 * DAY) == 20


async def test_an_event_older_than_the_window_fires_nothing(session: AsyncSession) -> None:
    tenant = await make_tenant(session)
    tag = await make_tag(session, tenant.id, await make_group(session, tenant.id))
    rule = await add_rule(
        session, tenant.id, event_type="share", window_days=7, weight=5, target={"tag_id": tag}
    )
    contact = uuid.uuid4()
    late = await record(session, tenant.id, contact, "share", T0)
    await fire(session, [late], T0 + 8 * DAY)
    assert await firings(session, rule) == []
    recent = await record(session, tenant.id, contact, "share", T0 + 7 * DAY)
    await fire(session, [recent], T0 + 8 * DAY)
    assert await weight(session, tenant.id, contact, tag, T0 + 8 * DAY) == 5


async def test_a_tag_derived_from_a_property_is_created_and_counted_per_value(
    session: AsyncSession,
) -> None:
    tenant = await make_tenant(session)
    interest = await make_group(session, tenant.id, "browsing", half_life_days=30, floor=1)
    rule = await add_rule(
        session,
        tenant.id,
        event_type="product.view",
        min_count=3,
        window_days=7,
        weight=10,
        cap=100,
        target={"group_id": interest, "from_property": "category"},
    )
    contact = uuid.uuid4()
    long_name = "t" * 31
    views = []
    for i, category in enumerate(
        ["tea", "coffee", "tea", "coffee", "tea", "", long_name, None, 42, "茶" * 30]
    ):
        props = {"product_id": f"p{i}"} if category is None else {"category": category}
        views.append(await record(session, tenant.id, contact, "product.view", T0 + i * MIN, props))
    # Two more 茶 views so that tag reaches 3 too.
    for i in (10, 11):
        views.append(
            await record(
                session, tenant.id, contact, "product.view", T0 + i * MIN, {"category": "茶" * 30}
            )
        )
    now = T0 + 12 * MIN
    await fire(session, views, now)
    tags = dict(
        (
            await session.execute(
                text("SELECT name, id FROM tags WHERE tenant_id = :t AND group_id = :g"),
                {"t": tenant.id, "g": interest},
            )
        ).all()
    )
    assert set(tags) == {"tea", "茶" * 30}, "coffee was viewed twice only; no other names"
    assert await weight(session, tenant.id, contact, tags["tea"], now) == pytest.approx(10)
    assert await weight(session, tenant.id, contact, tags["茶" * 30], now) == pytest.approx(10)
    by_source = {f["source_event_id"]: f for f in await firings(session, rule)}
    assert by_source[views[4].source_event_id]["tag_id"] == tags["tea"]
    skipped = {f["reason"] for f in by_source.values() if f["outcome"] == "skipped"}
    assert skipped == {
        "tag_name_empty",
        "tag_name_too_long",
        "property_missing",
        "property_not_text",
    }
    assert len(by_source) == 6  # 2 fired, 4 skipped; the views below the count: nothing

    # The tag decays with its group's half-life: half after 30 days.
    assert await weight(session, tenant.id, contact, tags["tea"], now + 30 * DAY) == pytest.approx(
        5
    )


async def test_set_stores_its_weight_and_a_paused_rule_fires_nothing(
    session: AsyncSession,
) -> None:
    tenant = await make_tenant(session)
    tag = await make_tag(session, tenant.id, await make_group(session, tenant.id))
    rule = await add_rule(
        session,
        tenant.id,
        event_type="order.paid",
        action="set",
        weight=7,
        target={"tag_id": tag},
    )
    contact = uuid.uuid4()
    paid = {"order_id": "o1", "amount_fen": 100}
    await fire(session, [await record(session, tenant.id, contact, "order.paid", T0, paid)], T0)
    await fire(
        session, [await record(session, tenant.id, contact, "order.paid", T0 + MIN, paid)], T0
    )
    assert await weight(session, tenant.id, contact, tag, T0 + MIN) == 7

    await service.set_status(session, tenant.id, rule, "paused")
    other = uuid.uuid4()
    meanwhile = await record(session, tenant.id, other, "order.paid", T0 + 2 * MIN, paid)
    await fire(session, [meanwhile], T0 + 2 * MIN)
    assert await weight(session, tenant.id, other, tag, T0 + 2 * MIN) is None
    assert await firings(session, rule) != [] and all(
        f["contact_id"] == contact for f in await firings(session, rule)
    )
    await service.set_status(session, tenant.id, rule, "active")
    after = await record(session, tenant.id, other, "order.paid", T0 + 4 * MIN, paid)
    await fire(session, [after], T0 + 4 * MIN)
    assert await weight(session, tenant.id, other, tag, T0 + 4 * MIN) == 7


async def test_defaults_are_installed_once_and_tag_as_spec_says(session: AsyncSession) -> None:
    tenant = await make_tenant(session)
    contact, inviter = uuid.uuid4(), uuid.uuid4()
    events = [
        await record(
            session,
            tenant.id,
            contact,
            "product.view",
            T0 + i * MIN,
            {"product_id": "p", "category": "tea"},
        )
        for i in range(3)
    ]
    events.append(
        await record(
            session,
            tenant.id,
            contact,
            "order.paid",
            T0 + 3 * MIN,
            {"order_id": "o", "amount_fen": 1},
        )
    )
    events.append(await record(session, tenant.id, contact, "share", T0 + 4 * MIN))
    events.append(
        await record(
            session,
            tenant.id,
            inviter,
            "referral.succeeded",
            T0 + 5 * MIN,
            {"inviter_contact_id": str(inviter)},
        )
    )
    now = T0 + 6 * MIN
    await fire(session, events, now)
    rows = await session.execute(
        text(
            "SELECT ct.contact_id, g.name AS grp, g.kind, g.half_life_days, t.name, ct.weight"
            " FROM contact_tags ct JOIN tags t ON t.id = ct.tag_id"
            " JOIN tag_groups g ON g.id = t.group_id WHERE ct.tenant_id = :t"
        ),
        {"t": tenant.id},
    )
    got = {(r.contact_id, r.grp, r.name): (r.kind, r.half_life_days, r.weight) for r in rows}
    assert got == {
        (contact, "interest", "tea"): ("interest", 30.0, 10.0),
        (contact, "consumption", "purchaser"): ("consumption", None, 20.0),
        (contact, "engagement", "sharer"): ("engagement", None, 30.0),
        (inviter, "engagement", "referrer"): ("engagement", None, 50.0),
    }
    rules, _ = await service.list_rules(
        session, tenant.id, status=None, event_type=None, cursor=None, limit=50
    )
    assert sorted(r.default_key or "" for r in rules) == [
        "interest_views",
        "purchaser",
        "referrer",
        "sharer",
    ]
    # Deleted by ops, a default stays deleted.
    sharer = next(r for r in rules if r.default_key == "sharer")
    await service.delete_rule(session, tenant.id, sharer.id)
    await fire(session, [await record(session, tenant.id, contact, "share", now)], now)
    rules, _ = await service.list_rules(
        session, tenant.id, status=None, event_type=None, cursor=None, limit=50
    )
    assert len(rules) == 3


async def test_through_the_pipeline_the_defaults_tag_interest_and_the_inviter(
    session: AsyncSession,
) -> None:
    """Bus events as the users and points services publish them, through every stage."""
    tenant = await make_tenant(session)
    contact, inviter = uuid.uuid4(), uuid.uuid4()
    ids = iter(range(1, 100))

    def event(kind: str, payload: dict[str, Any], at: datetime) -> Event:
        return Event(
            id=next(ids),
            event_id=uuid.uuid4(),
            type=kind,
            tenant_id=tenant.id,
            payload=payload,
            created_at=at,
        )

    def business(kind: str, at: datetime, **properties: Any) -> Event:
        return event(
            kind,
            {
                "contact_id": str(contact),
                "event_id": uuid.uuid4().hex,
                "occurred_at": at.isoformat(),
                "properties": properties,
                "source": "event",
            },
            at,
        )

    views = [
        business("product.view", T0 + i * DAY, product_id="p", category="tea") for i in range(3)
    ]
    referral = event(
        "referral.succeeded",
        {"inviter_contact_id": str(inviter), "occurred_at": (T0 + 2 * DAY).isoformat()},
        T0 + 2 * DAY,
    )
    with clock.use(lambda: T0 + 2 * DAY + MIN):
        await pipeline.apply_events(session, views[:2])
        await pipeline.apply_events(session, [views[2], referral])
        # Delivered again in a later batch: applied once, fired once.
        await pipeline.apply_events(session, [views[2], referral])
    rows = await session.execute(
        text(
            "SELECT ct.contact_id, t.name, ct.weight, ct.source FROM contact_tags ct"
            " JOIN tags t ON t.id = ct.tag_id WHERE ct.tenant_id = :t"
        ),
        {"t": tenant.id},
    )
    assert {(r.contact_id, r.name): (r.weight, r.source) for r in rows} == {
        (contact, "tea"): (10.0, "rule"),
        (inviter, "referrer"): (50.0, "rule"),
    }


async def test_derived_tags_stop_at_the_tenants_limit_of_tags(
    session: AsyncSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant = await make_tenant(session)
    group = await make_group(session, tenant.id)
    rule = await add_rule(
        session,
        tenant.id,
        event_type="cart.add",
        weight=1,
        target={"group_id": group, "from_property": "product_id"},
    )
    existing = await session.scalar(
        text("SELECT count(*) FROM tags WHERE tenant_id = :t"), {"t": tenant.id}
    )
    monkeypatch.setattr(targets, "MAX_TAGS_PER_TENANT", existing + 2)
    contact = uuid.uuid4()
    carts = [
        await record(session, tenant.id, contact, "cart.add", T0 + i * MIN, {"product_id": p})
        for i, p in enumerate(["a", "b", "c", "a"])
    ]
    await fire(session, carts, T0 + 5 * MIN)
    outcomes = [(f["outcome"], f["reason"]) for f in await firings(session, rule)]
    assert sorted(outcomes, key=str) == sorted(
        [("fired", None), ("fired", None), ("skipped", "tag_not_created"), ("fired", None)],
        key=str,
    )
    names = await session.execute(
        text("SELECT name FROM tags WHERE group_id = :g ORDER BY name"), {"g": group}
    )
    assert list(names.scalars()) == ["a", "b"]
