"""Live membership: incremental re-evaluation (live.reevaluate with real Changes) against
full builds, merges and erasure, and timed conditions leaving through the sweep on a
simulated clock."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from services.tagging.facts import Changes
from services.tagging.segments import live, service, sweep
from tests.helpers import make_tenant
from tests.tagging.test_segments_support import (
    add_event,
    add_profile,
    days,
    join_group,
    make_tags,
    members_of,
    segment_events,
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
    _ = uuid
