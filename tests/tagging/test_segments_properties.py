"""Property test: the three evaluators of a segment rule agree with a brute force.

Hypothesis generates a handful of contacts (profile fields, attributes, consent,
tags with weights that may decay, events on various days with properties, group
memberships, some merged or erased) and a random rule over every kind of
condition, combined with all/any/not. The brute force below evaluates the rule
over those raw values in plain Python, written from the rule contract alone.
Then, on the real database:

1. the full build (one set-based statement) makes exactly the brute force's
   members;
2. the same SQL restricted to a set of contacts, from no members, makes the
   same members among them;
3. `explain` (the Python evaluator over each contact's loaded facts) answers
   `member` as the brute force does, for every contact.

Hypothesis calls examples synchronously, so it runs in a worker thread and hands
each example to the session's loop; each example runs in a savepoint rolled back
at its end.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.tagging.facts import Changes
from services.tagging.segments import compiler, live, repository, rules, service
from tests.helpers import make_tenant
from tests.tagging.test_segments_support import (
    TZ,
    add_event,
    add_profile,
    join_group,
    make_tags,
    members_of,
    set_tag,
)

NOW = datetime(2026, 11, 20, 15, 30, tzinfo=UTC)  # 23:30 in Asia/Shanghai
TAGS = 3
EVENT_TYPES = ("order.paid", "page.view")
GROUPS = ("g1", "g2")
STAGES = ("potential", "new", "active", "silent", "churned")
CHANNELS = ("live", "shop")
STAFF = ("u1", "u2")
TIERS = ("gold", "silver")
CITIES = ("Hangzhou", "Shanghai")
VALUE_TIERS = ("high_value", "dormant")


@dataclass
class Person:
    status: str
    created_days_ago: float
    lifecycle_stage: str
    channel: str | None
    owner: str | None
    points_tier: str | None
    attributes: dict[str, Any]
    consent: dict[str, str]
    # tag index -> (weight, days since weighted, half-life or None)
    tags: dict[int, tuple[int, float, float | None]]
    # (event type, days ago, category or None)
    events: list[tuple[str, float, str | None]]
    groups: set[str] = field(default_factory=set)
    health_score: int | None = None
    value_tier: str | None = None


people = st.builds(
    Person,
    status=st.sampled_from(["live", "live", "live", "merged", "erased"]),
    created_days_ago=st.sampled_from([0.1, 0.7, 1.2, 6.5, 7.2, 30.0]),
    lifecycle_stage=st.sampled_from(STAGES),
    channel=st.one_of(st.none(), st.sampled_from(CHANNELS)),
    owner=st.one_of(st.none(), st.sampled_from(STAFF)),
    points_tier=st.one_of(st.none(), st.sampled_from(TIERS)),
    attributes=st.fixed_dictionaries(
        {},
        optional={
            "city": st.sampled_from(CITIES),
            "vip": st.booleans(),
            "n": st.one_of(st.integers(0, 5), st.sampled_from(["3", True])),
        },
    ),
    consent=st.fixed_dictionaries({}, optional={"sms": st.sampled_from(["opted_in", "opted_out"])}),
    tags=st.dictionaries(
        st.integers(0, TAGS - 1),
        st.tuples(
            st.integers(1, 30),
            st.sampled_from([0.0, 3.0, 12.5]),
            st.sampled_from([None, 10.0]),
        ),
        max_size=TAGS,
    ),
    events=st.lists(
        st.tuples(
            st.sampled_from(EVENT_TYPES),
            st.sampled_from([0.0, 0.5, 0.9, 1.5, 6.4, 6.9, 29.5, 31.0]),
            st.one_of(st.none(), st.sampled_from(["tea", "coffee"])),
        ),
        max_size=6,
    ),
    groups=st.sets(st.sampled_from(GROUPS)),
    health_score=st.one_of(st.none(), st.integers(0, 100)),
    value_tier=st.one_of(st.none(), st.sampled_from(VALUE_TIERS)),
)


def count_bounds() -> st.SearchStrategy[dict[str, int]]:
    return st.dictionaries(
        st.sampled_from(["gte", "lte", "eq"]), st.integers(0, 3), min_size=1, max_size=2
    )


def leaf_rules() -> st.SearchStrategy[dict[str, Any]]:
    # Tags are drawn as their index and the nested segment as NESTED: `bind` puts in
    # the ids the database gave them. Each kind of condition is about as likely.
    tag = st.integers(0, TAGS - 1)
    tags = st.one_of(
        st.builds(lambda t: {"tag": t}, tag),
        st.builds(lambda t, w: {"tag": t, "min_weight": w}, tag, st.integers(0, 25)),
    )
    events = st.builds(
        lambda e, c, w, where: {
            "event": e,
            **({"count": c} if c else {}),
            **({"within_days": w} if w else {}),
            **({"where": {"category": where}} if where else {}),
        },
        st.sampled_from(EVENT_TYPES),
        st.one_of(st.none(), count_bounds(), count_bounds(), count_bounds()),
        st.one_of(st.none(), st.sampled_from([1, 2, 7, 30])),
        st.one_of(st.none(), st.none(), st.sampled_from(["tea", "coffee"])),
    )
    profile = st.one_of(
        st.builds(
            lambda v: {"field": "lifecycle_stage", "in": v},
            st.lists(st.sampled_from(STAGES), min_size=1, max_size=3),
        ),
        st.builds(
            lambda v: {"field": "channel", "eq": v},
            st.one_of(st.none(), st.sampled_from(CHANNELS)),
        ),
        st.builds(
            lambda v: {"field": "owner_staff", "in": v},
            st.lists(st.sampled_from(STAFF), min_size=1),
        ),
        st.builds(
            lambda v: {"field": "points_tier", "eq": v},
            st.one_of(st.none(), st.sampled_from(TIERS)),
        ),
        st.builds(
            lambda v: {"field": "consent.sms", "eq": v},
            st.one_of(st.none(), st.sampled_from(["opted_in", "opted_out"])),
        ),
        st.builds(lambda d: {"field": "created_at", "within_days": d}, st.sampled_from([1, 2, 7])),
    )
    attributes = st.one_of(
        st.builds(
            lambda v: {"field": "attributes.city", "eq": v},
            st.one_of(st.none(), st.sampled_from(CITIES)),
        ),
        st.builds(lambda v: {"field": "attributes.vip", "eq": v}, st.booleans()),
        st.builds(
            lambda v: {"field": "attributes.n", "in": v},
            st.lists(st.one_of(st.integers(0, 5), st.just("3"), st.just(True)), min_size=1),
        ),
        st.builds(
            lambda op, v: {"field": "attributes.n", op: v},
            st.sampled_from(["gte", "lte"]),
            st.integers(0, 5),
        ),
    )
    others = st.one_of(
        st.builds(lambda g: {"in_group": g}, st.sampled_from(GROUPS)),
        st.just({"segment": NESTED}),
    )
    # Event conditions have the most shapes (bounds, windows, properties): drawn 3 times
    # as often as each other kind.
    return st.one_of(
        tags,
        events,
        events.map(dict),
        events.map(dict),
        profile,
        attributes,
        others,
        st.just({"all": []}),
    )


NESTED = -1


def _combined(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(
        st.builds(lambda c: {"all": c}, st.lists(children, min_size=1, max_size=4)),
        st.builds(lambda c: {"any": c}, st.lists(children, min_size=1, max_size=4)),
        st.builds(lambda c: {"not": c}, children),
    )


# Two levels of all/any/not over the leaves, most often with several leaves (a
# recursive strategy's budget gave mostly single leaves).
_leaves = leaf_rules()
_one_level = _combined(_leaves)
rule_trees = st.one_of(_leaves, _one_level, _combined(st.one_of(_leaves, _one_level)))


def bind(rule: Any, tag_ids: list[int], nested: int) -> Any:
    if isinstance(rule, list):
        return [bind(r, tag_ids, nested) for r in rule]
    if not isinstance(rule, dict):
        return rule
    bound = {k: bind(v, tag_ids, nested) for k, v in rule.items()}
    if "tag" in rule:
        bound["tag"] = tag_ids[rule["tag"]]
    if "segment" in rule:
        bound["segment"] = nested
    return bound


# -- the brute force -----------------------------------------------------------------------


def _json_equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return bool(a == b)
    return type(a) is type(b) and bool(a == b)


def _today() -> date:
    return NOW.astimezone(TZ).date()


def _local_day(days_ago: float) -> date:
    return (NOW - timedelta(days=days_ago)).astimezone(TZ).date()


def brute(rule: dict[str, Any], p: Person, in_nested: bool) -> bool:
    """The rule (tags by index) over one person's raw values."""
    if "all" in rule:
        return all(brute(r, p, in_nested) for r in rule["all"])
    if "any" in rule:
        return any(brute(r, p, in_nested) for r in rule["any"])
    if "not" in rule:
        return not brute(rule["not"], p, in_nested)
    if "tag" in rule:
        index = rule["tag"]
        if index not in p.tags:
            return False
        weight, age, half_life = p.tags[index]
        current = weight * 0.5 ** (age / half_life) if half_life and age > 0 else weight
        return "min_weight" not in rule or current >= rule["min_weight"]
    if "event" in rule:
        first = _today() - timedelta(days=rule.get("within_days", 100000) - 1)
        where = rule.get("where", {}).get("category")
        n = sum(
            1
            for kind, ago, category in p.events
            if kind == rule["event"]
            and ("within_days" not in rule or _local_day(ago) >= first)
            and (where is None or category == where)
        )
        bounds = rule.get("count", {"gte": 1})
        return all({"gte": n >= k, "lte": n <= k, "eq": n == k}[op] for op, k in bounds.items())
    if "in_group" in rule:
        return rule["in_group"] in p.groups
    if "segment" in rule:
        return in_nested
    name = rule["field"]
    if name == "created_at":
        first = _today() - timedelta(days=rule["within_days"] - 1)
        return _local_day(p.created_days_ago) >= first
    if name.startswith("attributes."):
        value: Any = p.attributes.get(name.split(".", 1)[1])
    elif name.startswith("consent."):
        value = p.consent.get(name.split(".", 1)[1])
    else:
        value = {
            "lifecycle_stage": p.lifecycle_stage,
            "channel": p.channel,
            "owner_staff": p.owner,
            "points_tier": p.points_tier,
            "health_score": p.health_score,
            "value_tier": p.value_tier,
        }[name]
    if "eq" in rule:
        if rule["eq"] is None:
            return value is None
        return value is not None and _json_equal(value, rule["eq"])
    if value is None:
        return False
    if "in" in rule:
        return any(_json_equal(value, v) for v in rule["in"])
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return ("gte" not in rule or value >= rule["gte"]) and (
        "lte" not in rule or value <= rule["lte"]
    )


# -- the example ---------------------------------------------------------------------------

NESTED_RULE_TAG = 0  # the nested segment: contacts holding the first tag


async def _store(
    session: AsyncSession, tenant_id: uuid.UUID, crowd: list[Person], tag_ids: list[int]
) -> list[uuid.UUID]:
    ids = []
    for p in crowd:
        contact = await add_profile(
            session,
            tenant_id,
            created_at=NOW - timedelta(days=p.created_days_ago),
            owner=p.owner,
            status=p.status,
            lifecycle_stage=p.lifecycle_stage,
            channel=p.channel,
            points_tier=p.points_tier,
            attributes=p.attributes,
            consent=p.consent,
            health_score=p.health_score,
            value_tier=p.value_tier,
        )
        for index, (weight, age, half_life) in p.tags.items():
            await set_tag(
                session,
                tenant_id,
                contact,
                tag_ids[index],
                weight,
                NOW - timedelta(days=age),
                half_life,
            )
        for kind, ago, category in p.events:
            await add_event(
                session,
                tenant_id,
                contact,
                kind,
                NOW - timedelta(days=ago),
                {"category": category} if category else {"other": 1},
            )
        for group in p.groups:
            await join_group(session, tenant_id, contact, group)
        ids.append(contact)
    return ids


async def check(session: AsyncSession, crowd: list[Person], drawn: dict[str, Any]) -> None:
    savepoint = await session.begin_nested()
    try:
        tenant = await make_tenant(session)
        tag_ids = await make_tags(session, tenant.id, TAGS)
        ids = await _store(session, tenant.id, crowd, tag_ids)
        nested = await service.create_segment(
            session, tenant.id, "nested", {"tag": tag_ids[NESTED_RULE_TAG]}, None, NOW
        )
        rule = bind(drawn, tag_ids, nested.id)
        in_nested = [p.status == "live" and NESTED_RULE_TAG in p.tags for p in crowd]
        expected = {
            c
            for c, p, n in zip(ids, crowd, in_nested, strict=True)
            if p.status == "live" and brute(drawn, p, n)
        }
        segment = await service.create_segment(session, tenant.id, "s", rule, None, NOW)
        assert segment.status == "ready"
        assert await members_of(session, segment.id) == expected, json.dumps(rule)

        # The restricted statement, from no members, for a subset and then the rest.
        await session.execute(
            text("DELETE FROM segment_members WHERE segment_id = :s"), {"s": segment.id}
        )
        node = rules.parse(rule)
        moment = compiler.moment_at(NOW, "Asia/Shanghai")
        half = ids[: len(ids) // 2]
        await live.evaluate_contacts(
            session, segment.id, segment.version, rule, tenant.id, half, moment, Changes()
        )
        assert await members_of(session, segment.id) == expected & set(half)
        await repository.apply_difference(session, tenant.id, segment.id, node, moment, ids)
        assert await members_of(session, segment.id) == expected

        for contact in ids:
            explained = await service.explain(session, tenant.id, segment.id, contact, NOW)
            assert explained["member"] == (contact in expected), (json.dumps(rule), explained)
    finally:
        await savepoint.rollback()


async def test_sql_incremental_and_explain_agree_with_brute_force(session: AsyncSession) -> None:
    loop = asyncio.get_running_loop()

    def run(coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=120)

    @settings(
        max_examples=120,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        database=None,
        print_blob=True,
        report_multiple_bugs=False,
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
    )
    # The rule is drawn first: drawn after the crowd it came out simpler.
    @given(rule=rule_trees, crowd=st.lists(people, min_size=1, max_size=6))
    def agree(rule: dict[str, Any], crowd: list[Person]) -> None:
        run(check(session, crowd, rule))

    await asyncio.to_thread(agree)


# Every kind of condition at its boundaries, over one crowd that has values on
# both sides of each (the property test above combines them).
CROWD = [
    Person(
        "live",
        0.1,
        "new",
        "live",
        "u1",
        "gold",
        {"city": "Hangzhou", "n": 3},
        {"sms": "opted_in"},
        {0: (10, 0.0, None), 1: (20, 12.5, 10.0)},
        [("order.paid", 0.0, "tea"), ("order.paid", 1.5, "coffee"), ("page.view", 6.9, None)],
        {"g1"},
    ),
    Person(
        "live",
        1.2,
        "active",
        None,
        "u2",
        None,
        {"vip": True, "n": "3"},
        {"sms": "opted_out"},
        {1: (9, 0.0, 10.0), 2: (25, 3.0, 10.0)},
        [("order.paid", 0.5, "tea"), ("order.paid", 6.4, "tea"), ("order.paid", 31.0, None)],
        {"g2"},
    ),
    Person(
        "live",
        6.5,
        "silent",
        "shop",
        None,
        "silver",
        {"n": 5, "vip": False},
        {},
        {0: (1, 3.0, None)},
        [("page.view", 29.5, "tea")],
        set(),
    ),
    Person("live", 30.0, "potential", None, None, None, {}, {}, {}, [], set()),
    Person(
        "merged",
        0.1,
        "new",
        "live",
        "u1",
        "gold",
        {"city": "Hangzhou"},
        {},
        {0: (10, 0.0, None)},
        [("order.paid", 0.0, None)],
        {"g1"},
    ),
    Person("erased", 0.1, "new", "live", "u1", "gold", {}, {}, {0: (30, 0.0, None)}, [], {"g1"}),
]
# Scores on two of them, on either side of the bounds below.
CROWD[0] = replace(CROWD[0], health_score=55, value_tier="high_value")
CROWD[1] = replace(CROWD[1], health_score=40, value_tier="dormant")
LEAVES: list[dict[str, Any]] = [
    {"tag": 0},
    {"tag": 1},
    {"tag": 1, "min_weight": 9},
    {"tag": 1, "min_weight": 8.4},
    {"tag": 2, "min_weight": 20},
    {"not": {"tag": 0}},
    {"event": "order.paid"},
    {"event": "order.paid", "within_days": 1},
    {"event": "order.paid", "within_days": 2},
    {"event": "order.paid", "within_days": 7},
    {"event": "order.paid", "count": {"gte": 2}, "within_days": 7},
    {"event": "order.paid", "count": {"eq": 0}, "within_days": 30},
    {"event": "order.paid", "count": {"lte": 1}, "within_days": 7},
    {"event": "order.paid", "count": {"gte": 1, "lte": 2}},
    {"event": "order.paid", "count": {"eq": 3}},
    {"event": "order.paid", "count": {"gte": 2}, "where": {"category": "tea"}},
    {"event": "order.paid", "count": {"eq": 0}, "where": {"category": "coffee"}, "within_days": 2},
    {"event": "page.view", "within_days": 30, "where": {"category": "tea"}},
    {"field": "lifecycle_stage", "in": ["new", "active"]},
    {"field": "lifecycle_stage", "eq": "silent"},
    {"field": "channel", "eq": None},
    {"field": "channel", "in": ["live", "shop"]},
    {"field": "owner_staff", "eq": "u1"},
    {"field": "owner_staff", "eq": None},
    {"field": "points_tier", "in": ["gold"]},
    {"field": "consent.sms", "eq": "opted_out"},
    {"field": "consent.sms", "eq": None},
    {"field": "attributes.city", "eq": "Hangzhou"},
    {"field": "attributes.city", "eq": None},
    {"field": "attributes.vip", "eq": True},
    {"field": "attributes.vip", "eq": False},
    {"field": "attributes.n", "eq": 3},
    {"field": "attributes.n", "in": ["3", 5]},
    {"field": "attributes.n", "gte": 3},
    {"field": "attributes.n", "lte": 4},
    {"not": {"field": "attributes.n", "gte": 4}},
    {"field": "created_at", "within_days": 1},
    {"field": "created_at", "within_days": 2},
    {"field": "created_at", "within_days": 7},
    {"in_group": "g1"},
    {"not": {"in_group": "g2"}},
    {"segment": NESTED},
    {"not": {"segment": NESTED}},
    {"field": "health_score", "gte": 40},
    {"field": "health_score", "eq": None},
    {"field": "value_tier", "eq": "high_value"},
    {"all": []},
    {"any": []},
]


async def test_every_condition_at_its_boundaries(session: AsyncSession) -> None:
    for rule in LEAVES:
        await check(session, CROWD, rule)
