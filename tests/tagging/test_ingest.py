"""The read model fed by events: profiles, counts by tenant-local day, events once each,
group memberships, merges and erasure; through the pipeline and over the real bus."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

import services.tagging.tasks  # noqa: F401  (registers the handlers)
from services.tagging import clock, pipeline
from services.tagging.facts import Changes
from services.tagging.profile import ingest
from shared.db import unit_of_work
from shared.events import Event, publish
from shared.runtime import Runtime
from tests.helpers import make_tenant
from tests.shared.bus_support import relay_all, work_until_idle

_ids = itertools.count(1)
AT = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)


def event(tenant: uuid.UUID, kind: str, payload: dict[str, Any], *, at: datetime = AT) -> Event:
    return Event(
        id=next(_ids),
        event_id=uuid.uuid4(),
        type=kind,
        tenant_id=tenant,
        payload=payload,
        created_at=at,
    )


def business(
    tenant: uuid.UUID, kind: str, contact: uuid.UUID, at: datetime = AT, **properties: Any
) -> Event:
    return event(
        tenant,
        kind,
        {
            "contact_id": str(contact),
            "event_id": uuid.uuid4().hex,
            "occurred_at": at.isoformat(),
            "properties": properties,
            "source": "event",
        },
    )


async def rows(session: AsyncSession, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in await session.execute(text(sql), params)]


async def days(session: AsyncSession, contact: uuid.UUID) -> list[tuple[Any, ...]]:
    return await rows(
        session,
        "SELECT event_type, day::text, n FROM tagging_event_days WHERE contact_id = :c "
        "ORDER BY event_type, day",
        c=contact,
    )


async def profile(session: AsyncSession, contact: uuid.UUID) -> dict[str, Any]:
    row = (
        await session.execute(
            text("SELECT * FROM tagging_profiles WHERE contact_id = :c"), {"c": contact}
        )
    ).one()
    return dict(row._mapping)


async def test_counts_on_the_tenant_local_day_and_profile_facts(session: AsyncSession) -> None:
    tenant = (await make_tenant(session)).id
    contact = uuid.uuid4()
    late = datetime(2026, 11, 20, 16, 30, tzinfo=UTC)  # 00:30 on the 21st in Shanghai
    changes = Changes()
    applied = await ingest.apply(
        session,
        [
            business(tenant, "page.view", contact, AT),
            business(tenant, "page.view", contact, AT + timedelta(hours=1)),
            business(tenant, "page.view", contact, late),
            business(tenant, "order.paid", contact, late, order_id="SO-1", amount_fen=12900),
            business(tenant, "consent.opt_out", contact, late + timedelta(hours=1), channel="sms"),
        ],
        changes,
        AT,
    )
    assert await days(session, contact) == [
        ("consent.opt_out", "2026-11-21", 1),
        ("order.paid", "2026-11-21", 1),
        ("page.view", "2026-11-20", 2),
        ("page.view", "2026-11-21", 1),
    ]
    assert [a.event_type for a in applied] == [
        "page.view",
        "page.view",
        "page.view",
        "order.paid",
        "consent.opt_out",
    ]
    assert all(a.contact_id == contact and a.tenant_id == tenant for a in applied)
    assert applied[2].day.isoformat() == "2026-11-21"
    assert applied[3].properties == {"order_id": "SO-1", "amount_fen": 12900}
    found = await profile(session, contact)
    assert found["status"] == "live"
    assert found["first_order_at"] == late and found["last_order_at"] == late
    # An opt-out is no interaction of the contact's.
    assert found["last_interaction_at"] == late
    facts = changes.contacts(tenant)[contact]
    assert ("event", "page.view") in facts and ("event", "order.paid") in facts
    assert ("field", "created_at") in facts  # first seen: every field is new
    orders = "SELECT order_id, amount_fen, refunded_fen FROM tagging_orders WHERE tenant_id = :t"
    assert await rows(session, orders, t=tenant) == [("SO-1", 12900, 0)]


async def test_a_replayed_event_counts_once(session: AsyncSession) -> None:
    tenant = (await make_tenant(session)).id
    contact = uuid.uuid4()
    view = business(tenant, "product.view", contact, category="tea")
    first = await ingest.apply(session, [view, view], Changes(), AT)
    assert len(first) == 1
    again = Changes()
    assert await ingest.apply(session, [view], again, AT) == []
    assert await days(session, contact) == [("product.view", "2026-11-20", 1)]
    assert ("event", "product.view") not in again.contacts(tenant).get(contact, set())


async def test_contact_events_set_profile_facts(session: AsyncSession) -> None:
    tenant = (await make_tenant(session)).id
    contact = uuid.uuid4()
    created = datetime(2026, 1, 5, tzinfo=UTC)
    c = str(contact)
    follow = {"contact_id": c, "occurred_at": AT.isoformat(), "staff_userid": "zhangsan"}
    await ingest.apply(
        session,
        [
            event(
                tenant,
                "contact.added",
                {**follow, "state": "live-1", "welcome_code": None, "new_contact": True},
            ),
            event(
                tenant,
                "consent.changed",
                {"contact_id": c, "channel": "sms", "status": "opted_out"},
            ),
            event(
                tenant,
                "tier.changed",
                {"contact_id": c, "from": None, "to": "gold", "reason": "joined"},
            ),
        ],
        Changes(),
        AT,
    )
    found = await profile(session, contact)
    assert (found["owner_staff"], found["channel"]) == ("zhangsan", "live-1")
    assert found["consent"] == {"sms": "opted_out"} and found["points_tier"] == "gold"

    changes = Changes()
    await ingest.apply(
        session,
        [
            event(
                tenant,
                "contact.profile_changed",
                {
                    "contact_id": c,
                    "created_at": created.isoformat(),
                    "owner_staff": "lisi",
                    "channel": "live-1",
                    "attributes": {"city": "Hangzhou"},
                },
            ),
            event(
                tenant,
                "consent.changed",
                {"contact_id": c, "channel": "wecom", "status": "opted_in"},
            ),
            event(tenant, "contact.lost", {**follow, "reason": "deleted_by_contact"}),
        ],
        changes,
        AT,
    )
    found = await profile(session, contact)
    assert found["created_at"] == created and found["owner_staff"] == "lisi"
    assert found["attributes"] == {"city": "Hangzhou"}
    assert found["consent"] == {"sms": "opted_out", "wecom": "opted_in"}
    assert (found["lost_at"], found["lost_reason"]) == (AT, "deleted_by_contact")
    facts = changes.contacts(tenant)[contact]
    assert {("field", "owner_staff"), ("field", "attributes"), ("field", "consent")} <= facts
    assert ("field", "channel") not in facts  # unchanged

    # Added again: followed again; the owner it has stays.
    await ingest.apply(
        session,
        [
            event(
                tenant,
                "contact.added",
                {**follow, "state": "other", "welcome_code": None, "new_contact": False},
            )
        ],
        Changes(),
        AT,
    )
    found = await profile(session, contact)
    assert (found["lost_at"], found["lost_reason"]) == (None, None)
    assert (found["owner_staff"], found["channel"]) == ("lisi", "live-1")


async def test_group_memberships(session: AsyncSession) -> None:
    tenant = (await make_tenant(session)).id
    a, b = uuid.uuid4(), uuid.uuid4()

    def group(kind: str, chat: str, contact: uuid.UUID | None = None) -> Event:
        payload: dict[str, Any] = {"chat_id": chat, "occurred_at": AT.isoformat()}
        if contact is not None:
            payload["contact_id"] = str(contact)
        return event(tenant, kind, payload)

    changes = Changes()
    await ingest.apply(
        session,
        [
            group("group.joined", "g1", a),
            group("group.joined", "g1", b),
            group("group.joined", "g2", a),
            group("group.joined", "g3", b),
            group("group.left", "g3", b),
        ],
        changes,
        AT,
    )
    members = (
        "SELECT chat_id, contact_id FROM tagging_group_members WHERE tenant_id = :t "
        "ORDER BY chat_id, contact_id"
    )
    assert await rows(session, members, t=tenant) == sorted([("g1", a), ("g1", b), ("g2", a)])
    assert ("group", "g1") in changes.contacts(tenant)[a]
    assert ("group", "g3") not in changes.contacts(tenant)[b]  # joined and left: no change
    changes = Changes()
    await ingest.apply(session, [group("group.dismissed", "g1")], changes, AT)
    assert await rows(session, members, t=tenant) == [("g2", a)]
    assert ("group", "g1") in changes.contacts(tenant)[b]


async def test_merge_moves_counts_and_memberships_once(session: AsyncSession) -> None:
    tenant = (await make_tenant(session)).id
    survivor, merged, third = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    joined = {"chat_id": "g1", "occurred_at": AT.isoformat()}
    await ingest.apply(
        session,
        [
            business(tenant, "checkin", survivor),
            business(tenant, "checkin", merged),
            business(tenant, "checkin", merged, AT + timedelta(days=1)),
            business(tenant, "order.paid", merged, AT, order_id="SO-9", amount_fen=500),
            event(tenant, "group.joined", {**joined, "contact_id": str(merged)}),
            event(tenant, "group.joined", {**joined, "contact_id": str(survivor)}),
            event(tenant, "group.joined", {**joined, "chat_id": "g2", "contact_id": str(merged)}),
            event(
                tenant,
                "consent.changed",
                {"contact_id": str(merged), "channel": "sms", "status": "opted_out"},
            ),
        ],
        Changes(),
        AT,
    )
    merge = event(
        tenant,
        "contact.merged",
        {"survivor_id": str(survivor), "merged_id": str(merged), "reason": "phone"},
    )
    changes = Changes()
    await ingest.apply(session, [merge], changes, AT)
    await ingest.apply(session, [merge], Changes(), AT)  # a second delivery moves nothing
    assert await days(session, survivor) == [
        ("checkin", "2026-11-20", 2),
        ("checkin", "2026-11-21", 1),
        ("order.paid", "2026-11-20", 1),
    ]
    assert await days(session, merged) == []
    assert await rows(
        session,
        "SELECT chat_id FROM tagging_group_members WHERE contact_id = :c ORDER BY chat_id",
        c=survivor,
    ) == [("g1",), ("g2",)]
    assert await rows(
        session, "SELECT contact_id FROM tagging_orders WHERE tenant_id = :t", t=tenant
    ) == [(survivor,)]
    gone = await profile(session, merged)
    assert (gone["status"], gone["merged_into"]) == ("merged", survivor)
    kept = await profile(session, survivor)
    assert kept["first_order_at"] == AT and kept["consent"] == {"sms": "opted_out"}
    facts = changes.contacts(tenant)[survivor]
    assert {("field", "lifecycle_stage"), ("event", "order.paid"), ("group", "g2")} <= facts
    assert ("field", "lifecycle_stage") in changes.contacts(tenant)[merged]

    # Later events of the merged id (and of a chain: survivor merged in turn) go to the
    # live end of the chain.
    applied = await ingest.apply(
        session,
        [
            event(
                tenant,
                "contact.merged",
                {"survivor_id": str(third), "merged_id": str(survivor), "reason": "unionid"},
            ),
            business(tenant, "share", merged),
        ],
        Changes(),
        AT,
    )
    assert [(a.contact_id, a.event_type) for a in applied] == [(third, "share")]
    assert ("checkin", "2026-11-20", 2) in await days(session, third)


async def test_erasure_clears_personal_facts_and_stops_events(session: AsyncSession) -> None:
    tenant = (await make_tenant(session)).id
    contact = uuid.uuid4()
    c = str(contact)
    await ingest.apply(
        session,
        [
            event(
                tenant,
                "contact.profile_changed",
                {
                    "contact_id": c,
                    "created_at": AT.isoformat(),
                    "owner_staff": "lisi",
                    "channel": "x",
                    "attributes": {"city": "Hangzhou"},
                },
            ),
            business(tenant, "comment", contact, text="my address is ..."),
            event(
                tenant,
                "group.joined",
                {"chat_id": "g1", "contact_id": c, "occurred_at": AT.isoformat()},
            ),
        ],
        Changes(),
        AT,
    )
    changes = Changes()
    await ingest.apply(
        session,
        [event(tenant, "contact.erased", {"contact_id": c, "pseudonym": "e-1"})],
        changes,
        AT,
    )
    found = await profile(session, contact)
    assert found["status"] == "erased"
    assert (found["owner_staff"], found["channel"], found["attributes"]) == (None, None, {})
    # Scoped to the tenant: rows of tests that commit may be there too.
    scoped = "SELECT {} FROM {} WHERE tenant_id = :t"
    assert await rows(session, scoped.format("properties", "tagging_events"), t=tenant) == [({},)]
    assert await rows(session, scoped.format("*", "tagging_group_members"), t=tenant) == []
    assert await days(session, contact) == [("comment", "2026-11-20", 1)]  # aggregates stay
    assert ("group", "g1") in changes.contacts(tenant)[contact]
    assert await ingest.apply(session, [business(tenant, "comment", contact)], Changes(), AT) == []
    assert await days(session, contact) == [("comment", "2026-11-20", 1)]


async def test_referral_counts_for_the_inviter(session: AsyncSession) -> None:
    tenant = (await make_tenant(session)).id
    inviter = uuid.uuid4()
    applied = await ingest.apply(
        session,
        [
            event(
                tenant,
                "referral.succeeded",
                {"inviter_contact_id": str(inviter), "occurred_at": AT.isoformat()},
            )
        ],
        Changes(),
        AT,
    )
    assert [(a.contact_id, a.event_type) for a in applied] == [(inviter, "referral.succeeded")]
    assert await days(session, inviter) == [("referral.succeeded", "2026-11-20", 1)]


async def test_a_malformed_event_is_skipped_alone(session: AsyncSession) -> None:
    tenant = (await make_tenant(session)).id
    contact = uuid.uuid4()
    applied = await ingest.apply(
        session,
        [
            event(tenant, "checkin", {"contact_id": "not-a-uuid", "occurred_at": AT.isoformat()}),
            business(tenant, "checkin", contact),
        ],
        Changes(),
        AT,
    )
    assert [a.contact_id for a in applied] == [contact]


async def test_the_pipeline_applies_a_batch(session: AsyncSession) -> None:
    tenant = (await make_tenant(session)).id
    contact = uuid.uuid4()
    with clock.use(lambda: AT + timedelta(hours=1)):
        await pipeline.apply_events(
            session,
            [
                business(tenant, "cart.add", contact, product_id="SKU-1"),
                business(tenant, "share", contact),
                business(tenant, "order.paid", contact, order_id="SO-1", amount_fen=900),
            ],
        )
    assert await days(session, contact) == [
        ("cart.add", "2026-11-20", 1),
        ("order.paid", "2026-11-20", 1),
        ("share", "2026-11-20", 1),
    ]
    found = await profile(session, contact)
    # The later stages ran on what the read model recorded.
    assert found["lifecycle_stage"] == "new" and found["stage_since"] == AT
    assert (found["frequency"], found["monetary_fen"]) == (1, 900)
    assert found["rfm_cell"] is not None and 0 <= found["health_score"] <= 100


async def test_over_the_bus_a_duplicate_delivery_counts_once(committed: Runtime) -> None:
    async with unit_of_work(committed.sessionmaker) as session:
        tenant = (await make_tenant(session)).id
    contact = uuid.uuid4()
    payload = {
        "contact_id": str(contact),
        "event_id": "shop-1",
        "occurred_at": AT.isoformat(),
        "properties": {"product_id": "SKU-1", "category": "tea"},
        "source": "event",
    }
    async with unit_of_work(committed.sessionmaker) as session:
        await publish(session, "product.view", payload, tenant_id=tenant)
        await publish(
            session,
            "order.paid",
            {**payload, "properties": {"order_id": "A", "amount_fen": 100}},
            tenant_id=tenant,
        )
    await relay_all(committed)
    await work_until_idle(committed, "tagging")
    # The same outbox rows delivered again, the bus's record of them gone too (a replay
    # from the dead-letter queue): the read model still counts each once.
    async with unit_of_work(committed.sessionmaker) as session:
        await session.execute(text("UPDATE outbox_events SET published_at = NULL"))
        await session.execute(
            text("DELETE FROM processed_events WHERE handler = 'tagging.apply_events'")
        )
    await relay_all(committed)
    await work_until_idle(committed, "tagging")
    async with unit_of_work(committed.sessionmaker) as session:
        handled = await session.scalar(
            text("SELECT count(*) FROM processed_events WHERE handler = 'tagging.apply_events'")
        )
        assert handled == 2, "both events were delivered again"
        assert await days(session, contact) == [
            ("order.paid", "2026-11-20", 1),
            ("product.view", "2026-11-20", 1),
        ]
        assert (await profile(session, contact))["last_order_at"] == AT


async def test_one_batch_of_two_tenants_counts_each_on_its_own_day(
    session: AsyncSession,
) -> None:
    shanghai = (await make_tenant(session)).id
    london = (await make_tenant(session)).id
    await session.execute(
        text("UPDATE tenants SET timezone = 'Europe/London' WHERE id = :t"), {"t": london}
    )
    late = datetime(2026, 11, 20, 16, 30, tzinfo=UTC)  # the 21st in Shanghai, the 20th in London
    a, b = uuid.uuid4(), uuid.uuid4()
    changes = Changes()
    applied = await ingest.apply(
        session,
        [business(shanghai, "checkin", a, late), business(london, "checkin", b, late)],
        changes,
        late,
    )
    assert {(x.tenant_id, x.day.isoformat()) for x in applied} == {
        (shanghai, "2026-11-21"),
        (london, "2026-11-20"),
    }
    assert await days(session, a) == [("checkin", "2026-11-21", 1)]
    assert await days(session, b) == [("checkin", "2026-11-20", 1)]
    assert set(changes.contacts(shanghai)) == {a} and set(changes.contacts(london)) == {b}
