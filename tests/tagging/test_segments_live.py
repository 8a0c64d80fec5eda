"""Live membership: incremental re-evaluation (live.reevaluate with real Changes) against
full builds, merges and erasure, and timed conditions leaving through the sweep on a
simulated clock."""

from __future__ import annotations

import itertools
import random
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

import services.tagging.tasks  # noqa: F401  (registers the handlers)
from services.tagging import clock, pipeline
from services.tagging.facts import Changes
from services.tagging.segments import live, service, sweep
from shared.events import Event
from tests.helpers import make_tenant
from tests.tagging.test_segments_support import (
    add_event,
    add_profile,
    days,
    drop_tag,
    join_group,
    leave_group,
    make_tags,
    members_of,
    segment_events,
    set_fields,
    set_tag,
)

NOW = datetime(2026, 11, 20, 4, 0, tzinfo=UTC)  # 12:00 in Asia/Shanghai


async def test_a_rule_is_built_and_followed_live(session: AsyncSession) -> None:
    tenant = await make_tenant(session)
    [tag] = await make_tags(session, tenant.id, 1)
    a = await add_profile(session, tenant.id, created_at=NOW - days(40))
    b = await add_profile(session, tenant.id, created_at=NOW - days(40))
    await set_tag(session, tenant.id, a, tag, 20, NOW)
    await add_event(session, tenant.id, a, "order.paid", NOW - days(3))
    await add_event(session, tenant.id, a, "order.paid", NOW - days(1))
    await add_event(session, tenant.id, b, "order.paid", NOW - days(1))
    rule = {
        "all": [
            {"tag": tag, "min_weight": 10},
            {"event": "order.paid", "count": {"gte": 2}, "within_days": 30},
            {"not": {"in_group": "g1"}},
        ]
    }
    segment = await service.create_segment(session, tenant.id, "buyers", rule, None, NOW)
    assert segment.status == "ready"
    assert await members_of(session, segment.id) == {a}
    assert await segment_events(session, segment.id) == [("segment.entered", a)]

    changes = Changes()
    await add_event(session, tenant.id, b, "order.paid", NOW, changes=changes)
    await set_tag(session, tenant.id, b, tag, 11, NOW, changes=changes)
    await join_group(session, tenant.id, a, "g1", changes=changes)
    await live.reevaluate(session, changes, NOW)
    assert await members_of(session, segment.id) == {b}
    assert await segment_events(session, segment.id) == [
        ("segment.entered", a),
        ("segment.entered", b),
        ("segment.left", a),
    ] or await segment_events(session, segment.id) == [
        ("segment.entered", a),
        ("segment.left", a),
        ("segment.entered", b),
    ]
    explained = await service.explain(session, tenant.id, segment.id, a, NOW)
    assert explained["member"] is False
    assert [leaf["holds"] for leaf in explained["leaves"]] == [True, True, True]
    assert [leaf["negated"] for leaf in explained["leaves"]] == [False, False, True]
    assert explained["leaves"][1]["text"] == "order.paid 2 times in 30 days, needs ≥2"


async def test_event_windows_leave_through_the_sweep(session: AsyncSession) -> None:
    tenant = await make_tenant(session)
    a = await add_profile(session, tenant.id, created_at=NOW - days(40))
    await add_event(session, tenant.id, a, "order.paid", NOW - days(28))
    await add_event(session, tenant.id, a, "order.paid", NOW - days(2))
    rule = {"event": "order.paid", "count": {"gte": 2}, "within_days": 30}
    segment = await service.create_segment(session, tenant.id, "w", rule, None, NOW)
    assert await members_of(session, segment.id) == {a}
    assert await sweep.sweep(session, NOW + days(1)) == 0
    assert await members_of(session, segment.id) == {a}
    assert await sweep.sweep(session, NOW + days(2)) == 1
    assert await members_of(session, segment.id) == set()
    assert (await segment_events(session, segment.id))[-1] == ("segment.left", a)


# -- through the pipeline ------------------------------------------------------------------

_ids = itertools.count(1)


def _event(tenant: uuid.UUID, kind: str, payload: dict[str, Any], at: datetime) -> Event:
    return Event(next(_ids), uuid.uuid4(), kind, tenant, payload, at)


def _paid(tenant: uuid.UUID, contact: uuid.UUID, at: datetime) -> Event:
    return _event(
        tenant,
        "order.paid",
        {
            "contact_id": str(contact),
            "event_id": uuid.uuid4().hex,
            "occurred_at": at.isoformat(),
            "properties": {"order_id": uuid.uuid4().hex, "amount_fen": 100},
            "source": "event",
        },
        at,
    )


async def test_the_pipeline_keeps_members_live_through_merges_and_erasure(
    session: AsyncSession,
) -> None:
    tenant = (await make_tenant(session)).id
    a, b = uuid.uuid4(), uuid.uuid4()
    rule = {"event": "order.paid", "count": {"gte": 2}, "within_days": 30}
    segment = await service.create_segment(session, tenant, "repeat", rule, None, NOW)
    everyone = await service.create_segment(session, tenant, "all", {"all": []}, None, NOW)
    listed = await service.create_segment(session, tenant, "static", None, [], NOW)
    with clock.use(lambda: NOW):
        await pipeline.apply_events(
            session,
            [_paid(tenant, a, NOW - days(1)), _paid(tenant, a, NOW), _paid(tenant, b, NOW)],
        )
        assert await members_of(session, segment.id) == {a}
        assert await members_of(session, everyone.id) == {a, b}
        await service.add_members(session, tenant, listed.id, [a, b], NOW)

        # b survives a's merge: a leaves every segment, b has a's orders now.
        merged = _event(
            tenant,
            "contact.merged",
            {"survivor_id": str(b), "merged_id": str(a), "reason": "phone"},
            NOW,
        )
        await pipeline.apply_events(session, [merged])
        assert await members_of(session, segment.id) == {b}
        assert await members_of(session, everyone.id) == {b}
        assert await members_of(session, listed.id) == {b}

        erased = _event(tenant, "contact.erased", {"contact_id": str(b), "pseudonym": "x"}, NOW)
        await pipeline.apply_events(session, [erased])
    assert await members_of(session, segment.id) == set()
    assert await members_of(session, everyone.id) == set()
    assert await members_of(session, listed.id) == set()
    assert await segment_events(session, segment.id) == [
        ("segment.entered", a),
        ("segment.left", a),
        ("segment.entered", b),
        ("segment.left", b),
    ]


# -- incremental equals full ---------------------------------------------------------------


async def test_incremental_membership_equals_a_full_rebuild_after_random_changes(
    session: AsyncSession,
) -> None:
    rng = random.Random(20261201)
    tenant = (await make_tenant(session)).id
    tags = await make_tags(session, tenant, 3)
    contacts = [
        await add_profile(session, tenant, created_at=NOW - days(rng.choice([0, 3, 9])))
        for _ in range(12)
    ]
    base = await service.create_segment(
        session, tenant, "base", {"tag": tags[0], "min_weight": 5}, None, NOW
    )
    rules_ = [
        {
            "all": [
                {"event": "order.paid", "count": {"gte": 2}, "within_days": 7},
                {"not": {"in_group": "g1"}},
            ]
        },
        {"any": [{"segment": base.id}, {"field": "lifecycle_stage", "in": ["active"]}]},
        {"not": {"any": [{"tag": tags[1]}, {"event": "page.view", "count": {"eq": 0}}]}},
        {
            "all": [
                {"field": "attributes.city", "eq": "Hangzhou"},
                {"tag": tags[2], "min_weight": 10},
            ]
        },
        {
            "event": "order.paid",
            "where": {"category": "tea"},
            "count": {"lte": 1},
            "within_days": 30,
        },
    ]
    segments = [base] + [
        await service.create_segment(session, tenant, f"s{i}", r, None, NOW)
        for i, r in enumerate(rules_)
    ]
    at = NOW
    for _ in range(25):
        changes = Changes()
        for _ in range(rng.randint(1, 6)):
            c = rng.choice(contacts)
            op = rng.randrange(7)
            if op == 0:
                await add_event(
                    session,
                    tenant,
                    c,
                    rng.choice(["order.paid", "page.view"]),
                    at - days(rng.choice([0, 2, 8])),
                    {"category": rng.choice(["tea", "coffee"])},
                    changes,
                )
            elif op == 1:
                await set_tag(
                    session,
                    tenant,
                    c,
                    rng.choice(tags),
                    rng.randint(1, 20),
                    at,
                    rng.choice([None, 5.0]),
                    changes,
                )
            elif op == 2:
                await drop_tag(session, tenant, c, rng.choice(tags), changes)
            elif op == 3:
                await join_group(session, tenant, c, "g1", changes)
            elif op == 4:
                await leave_group(session, tenant, c, "g1", changes)
            elif op == 5:
                await set_fields(
                    session, tenant, c, changes, lifecycle_stage=rng.choice(["active", "silent"])
                )
            else:
                await set_fields(
                    session,
                    tenant,
                    c,
                    changes,
                    attributes={"city": rng.choice(["Hangzhou", "Shanghai"])},
                )
        await live.reevaluate(session, changes, at)
        for segment in segments:
            # A full build now finds nothing to change.
            assert await service.build(session, segment.id, at) == {
                "segment.entered": 0,
                "segment.left": 0,
            }, segment.rule


# -- time ----------------------------------------------------------------------------------


async def test_timed_conditions_through_the_sweep(session: AsyncSession) -> None:
    tenant = (await make_tenant(session)).id
    [tag] = await make_tags(session, tenant, 1)
    fresh = await add_profile(session, tenant, created_at=NOW - days(0.1))
    quiet = await add_profile(session, tenant, created_at=NOW - days(20))
    await add_event(session, tenant, quiet, "page.view", NOW - days(6))
    await set_tag(session, tenant, fresh, tag, 20, NOW, half_life_days=10)
    new = await service.create_segment(
        session, tenant, "new", {"field": "created_at", "within_days": 2}, None, NOW
    )
    inactive = await service.create_segment(
        session,
        tenant,
        "inactive",
        {"event": "page.view", "count": {"eq": 0}, "within_days": 7},
        None,
        NOW,
    )
    warm = await service.create_segment(
        session, tenant, "warm", {"tag": tag, "min_weight": 10}, None, NOW
    )
    nesting = await service.create_segment(
        session,
        tenant,
        "warm or new",
        {"any": [{"segment": warm.id}, {"segment": new.id}]},
        None,
        NOW,
    )
    assert await members_of(session, new.id) == {fresh}
    assert await members_of(session, inactive.id) == {fresh}
    assert await members_of(session, warm.id) == {fresh}
    assert await members_of(session, nesting.id) == {fresh}

    await sweep.sweep(session, NOW + days(1))  # nothing has moved out yet
    assert await members_of(session, new.id) == {fresh}
    assert await members_of(session, inactive.id) == {fresh, quiet}  # its view left the window
    await sweep.sweep(session, NOW + days(2))
    assert await members_of(session, new.id) == set()
    assert await members_of(session, nesting.id) == {fresh}  # still warm: 20 * 0.5^0.2
    await sweep.sweep(session, NOW + days(9.9))
    assert await members_of(session, warm.id) == {fresh}
    await sweep.sweep(session, NOW + days(10.1))  # 20 * 0.5^1.01 < 10
    assert await members_of(session, warm.id) == set()
    assert await members_of(session, nesting.id) == set()
    assert (await segment_events(session, nesting.id))[-1] == ("segment.left", fresh)
