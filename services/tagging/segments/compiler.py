"""A rule tree compiled to one SQLAlchemy Core condition over `tagging_profiles` (alias
`p`), every value a bound parameter.

The same condition serves the full build (every live profile of the tenant: event
counts grouped once and joined) and the incremental one (`ids`: only these
contacts, each one's counts read through its keys).

Semantics, shared with the Python evaluator (evaluate.py):
- tag: the contact holds the tag; with `min_weight`, its current weight
  `tag_weight(weight, weighted_at, half_life_days, now)` is at least that;
- event: the count of the type's events, on the tenant-local days of the window
  (the `within_days` days ending today, today included; events dated later count
  too), satisfies every bound; `where` counts only events whose properties equal
  the given values; without `within_days`, every event ever counted;
- field: a missing value (NULL, an absent key) holds only for `"eq": null`;
  `gte`/`lte` on `attributes.<key>` hold only for numbers;
- created_at `within_days`: created on one of those tenant-local days (or later).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import (
    Numeric,
    and_,
    case,
    cast,
    exists,
    false,
    func,
    literal,
    not_,
    or_,
    select,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.sql.elements import ColumnElement

from services.tagging.profile.models import TaggingEvent, TaggingEventDay, TaggingGroupMember
from services.tagging.segments import rules
from services.tagging.segments.models import SegmentMember
from services.tagging.tags.models import ContactTag


@dataclass(frozen=True)
class Moment:
    """When a rule is evaluated: `now`, and the tenant's local day and zone."""

    now: datetime
    tz: ZoneInfo

    @property
    def today(self) -> date:
        return self.now.astimezone(self.tz).date()

    def window_start(self, days: int) -> date:
        """The first tenant-local day of a window of `days` days ending today."""
        return self.today - timedelta(days=days - 1)

    def day_start(self, day: date) -> datetime:
        return datetime.combine(day, time(0), tzinfo=self.tz)


def moment_at(now: datetime, timezone: str) -> Moment:
    return Moment(now, ZoneInfo(timezone))


def condition(
    node: rules.Node,
    p: Any,
    tenant_id: uuid.UUID,
    moment: Moment,
    ids: Any = None,
) -> ColumnElement[bool]:
    """The rule as a condition on the profile alias `p`; `ids` (a bound uuid[]) restricts
    the grouped subqueries to those contacts."""
    if isinstance(node, rules.All):
        parts = [condition(c, p, tenant_id, moment, ids) for c in node.children]
        return and_(*parts) if parts else true()
    if isinstance(node, rules.AnyOf):
        parts = [condition(c, p, tenant_id, moment, ids) for c in node.children]
        return or_(*parts) if parts else false()
    if isinstance(node, rules.Not):
        return not_(condition(node.child, p, tenant_id, moment, ids))
    if isinstance(node, rules.TagLeaf):
        return _tag(node, p, moment)
    if isinstance(node, rules.EventLeaf):
        return _event(node, p, tenant_id, moment, ids)
    if isinstance(node, rules.FieldLeaf):
        return func.coalesce(_field(node, p, moment), false())
    if isinstance(node, rules.GroupLeaf):
        gm = TaggingGroupMember.__table__
        return exists(
            select(literal(1)).where(
                gm.c.tenant_id == p.c.tenant_id,
                gm.c.chat_id == node.chat_id,
                gm.c.contact_id == p.c.contact_id,
            )
        )
    sm = SegmentMember.__table__
    return exists(
        select(literal(1)).where(
            sm.c.segment_id == node.segment_id, sm.c.contact_id == p.c.contact_id
        )
    )


def _tag(leaf: rules.TagLeaf, p: Any, moment: Moment) -> ColumnElement[bool]:
    ct = ContactTag.__table__
    query = select(literal(1)).where(
        ct.c.tenant_id == p.c.tenant_id,
        ct.c.contact_id == p.c.contact_id,
        ct.c.tag_id == leaf.tag_id,
    )
    if leaf.min_weight is not None:
        weight = func.tag_weight(ct.c.weight, ct.c.weighted_at, ct.c.half_life_days, moment.now)
        query = query.where(weight >= leaf.min_weight)
    return exists(query)


def _bounds(count: rules.Count, total: Any) -> ColumnElement[bool]:
    parts = []
    if count.gte is not None:
        parts.append(total >= count.gte)
    if count.lte is not None:
        parts.append(total <= count.lte)
    if count.eq is not None:
        parts.append(total == count.eq)
    return and_(*parts)


def json_value(value: Any) -> ColumnElement[Any]:
    return cast(literal(json.dumps(value)), JSONB)


def _event(
    leaf: rules.EventLeaf, p: Any, tenant_id: uuid.UUID, moment: Moment, ids: Any
) -> ColumnElement[bool]:
    if leaf.where:
        source: Any = TaggingEvent.__table__
        total: Any = func.count()
    else:
        source = TaggingEventDay.__table__
        total = func.sum(source.c.n)
    if ids is not None:
        # A few contacts: each one's count through the (tenant, contact, ...) keys, a plan
        # that stays an index lookup per contact whatever the statistics say.
        per_contact = select(total).where(
            source.c.tenant_id == tenant_id,
            source.c.contact_id == p.c.contact_id,
            source.c.event_type == leaf.event_type,
        )
        if leaf.within_days is not None:
            per_contact = per_contact.where(source.c.day >= moment.window_start(leaf.within_days))
        for key, value in leaf.where:
            per_contact = per_contact.where(source.c.properties[key] == json_value(value))
        return _bounds(leaf.count, func.coalesce(per_contact.scalar_subquery(), 0))
    # Every contact: the counts grouped once, joined (semi or anti) to the profiles.
    grouped = select(source.c.contact_id).where(
        source.c.tenant_id == tenant_id, source.c.event_type == leaf.event_type
    )
    if leaf.within_days is not None:
        grouped = grouped.where(source.c.day >= moment.window_start(leaf.within_days))
    for key, value in leaf.where:
        grouped = grouped.where(source.c.properties[key] == json_value(value))
    # A contact without any counted event has a count of 0: when 0 satisfies the
    # bounds the condition is "not among those whose count fails them".
    holds_at_zero = leaf.count.holds(0)
    bounds = _bounds(leaf.count, total)
    counted = grouped.group_by(source.c.contact_id).having(
        not_(bounds) if holds_at_zero else bounds
    )
    sub = counted.subquery()
    found = exists(select(literal(1)).select_from(sub).where(sub.c.contact_id == p.c.contact_id))
    return not_(found) if holds_at_zero else found


def _field(leaf: rules.FieldLeaf, p: Any, moment: Moment) -> ColumnElement[Any]:
    if not rules.profile_has_column(leaf.column):
        return true() if leaf.has_eq and leaf.eq is None else false()
    column = p.c[leaf.column]
    if leaf.kind == "time":
        parts = []
        if leaf.within_days is not None:
            parts.append(column >= moment.day_start(moment.window_start(leaf.within_days)))
        if leaf.gte is not None:
            parts.append(column >= leaf.gte)
        if leaf.lte is not None:
            parts.append(column <= leaf.lte)
        return and_(*parts)
    if leaf.kind in ("text", "consent"):
        value: Any = column if leaf.key is None else column[leaf.key].astext
        if leaf.has_eq:
            found: ColumnElement[Any] = value.is_(None) if leaf.eq is None else value == leaf.eq
            return found
        listed: ColumnElement[Any] = value.in_(list(leaf.values or ()))
        return listed
    if leaf.kind == "number":
        number = cast(column, Numeric)
        if leaf.has_eq:
            return column.is_(None) if leaf.eq is None else number == decimal(leaf.eq)
        if leaf.values is not None:
            return or_(*(number == decimal(v) for v in leaf.values))
        return _range(number, leaf)
    # attributes.<key>: JSON values
    element: ColumnElement[Any] = column[leaf.key]
    if leaf.has_eq:
        if leaf.eq is None:
            return or_(element.is_(None), element == json_value(None))
        equal: ColumnElement[Any] = element == json_value(leaf.eq)
        return equal
    if leaf.values is not None:
        return or_(*(element == json_value(v) for v in leaf.values))
    numeric: Any = case(
        (func.jsonb_typeof(element) == "number", cast(column[leaf.key].astext, Numeric)),
        else_=None,
    )
    return _range(numeric, leaf)


def _range(number: Any, leaf: rules.FieldLeaf) -> ColumnElement[bool]:
    parts = []
    if leaf.gte is not None:
        parts.append(number >= decimal(leaf.gte))
    if leaf.lte is not None:
        parts.append(number <= decimal(leaf.lte))
    return and_(*parts)


def decimal(value: float | int) -> ColumnElement[Any]:
    """A number as an exact numeric parameter (the decimal it is written as)."""
    return literal(Decimal(repr(value)), Numeric)
