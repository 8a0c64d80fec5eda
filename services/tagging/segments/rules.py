"""The segment rule contract: JSON in, a checked tree of conditions out.

    {"all": [...]}  {"any": [...]}  {"not": {...}}
    {"tag": 12, "min_weight": 10}
    {"event": "order.paid", "count": {"gte": 2}, "within_days": 30, "where": {"category": "tea"}}
    {"field": "lifecycle_stage", "in": ["active", "new"]}   (also "eq", "gte", "lte")
    {"field": "created_at", "within_days": 7}
    {"in_group": "wrOgQhDgAAMYQiS5"}
    {"segment": 3}

`parse` checks the shape and the values and names the failing path
(`all[2].tag`); whether the tags and segments it names exist, and whether
nesting makes a cycle, is the service's check (it needs the database). The
tree says which facts it reads (`reads`) and whether time alone changes it
(`timed`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.tagging.profile.models import LIFECYCLE_STAGES, TaggingProfile
from shared.errors import InvalidInput

MAX_DEPTH = 12
MAX_LEAVES = 100
MAX_WINDOW_DAYS = 3650
MAX_COUNT = 1_000_000
MAX_TEXT = 200
MAX_IN_VALUES = 500
MAX_WHERE_KEYS = 10
MAX_ID = 2**63 - 1
CONSENT_STATUSES = ("opted_in", "opted_out")

# Profile fields a rule may read, and what their values are: "text" (eq/in),
# "number" (eq/in/gte/lte), "time" (created_at: within_days/gte/lte), "json"
# (attributes.<key>: any scalar for eq/in, numbers for gte/lte), "consent".
FIELD_KINDS: dict[str, str] = {
    "lifecycle_stage": "text",
    "rfm_cell": "text",
    "value_tier": "text",
    "points_tier": "text",
    "health_score": "number",
    "owner_staff": "text",
    "channel": "text",
    "created_at": "time",
}
PREFIX_KINDS = {"consent": "consent", "attributes": "json"}

Scalar = str | int | float | bool | None


class RuleError(InvalidInput):
    code = "invalid_rule"

    def __init__(self, path: str, message: str) -> None:
        where = path or "rule"
        super().__init__(f"{where}: {message}", details={"path": where})
        self.path = where


@dataclass(frozen=True)
class All:
    path: str
    children: tuple[Node, ...]


@dataclass(frozen=True)
class AnyOf:
    path: str
    children: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    path: str
    child: Node


@dataclass(frozen=True)
class TagLeaf:
    path: str
    raw: dict[str, Any]
    tag_id: int
    min_weight: float | None


@dataclass(frozen=True)
class Count:
    """A bound on a count: every given bound must hold."""

    gte: int | None = None
    lte: int | None = None
    eq: int | None = None

    def holds(self, n: int) -> bool:
        return (
            (self.gte is None or n >= self.gte)
            and (self.lte is None or n <= self.lte)
            and (self.eq is None or n == self.eq)
        )

    def text(self) -> str:
        parts = []
        if self.eq is not None:
            parts.append(f"={self.eq}")
        if self.gte is not None:
            parts.append(f"≥{self.gte}")
        if self.lte is not None:
            parts.append(f"≤{self.lte}")
        return " and ".join(parts)


@dataclass(frozen=True)
class EventLeaf:
    path: str
    raw: dict[str, Any]
    event_type: str
    count: Count
    within_days: int | None
    where: tuple[tuple[str, Scalar], ...]


@dataclass(frozen=True)
class FieldLeaf:
    """`field` is the full name (`attributes.city`); `column` the profile column
    (`attributes`) and `key` the part after the dot, if any."""

    path: str
    raw: dict[str, Any]
    field: str
    column: str
    key: str | None
    kind: str
    eq: Any = None
    has_eq: bool = False
    values: tuple[Any, ...] | None = None
    gte: Any = None
    lte: Any = None
    within_days: int | None = None


@dataclass(frozen=True)
class GroupLeaf:
    path: str
    raw: dict[str, Any]
    chat_id: str


@dataclass(frozen=True)
class SegmentLeaf:
    path: str
    raw: dict[str, Any]
    segment_id: int


Leaf = TagLeaf | EventLeaf | FieldLeaf | GroupLeaf | SegmentLeaf
Node = All | AnyOf | Not | Leaf


def parse(rule: Any) -> Node:
    """The checked tree of a rule, or RuleError naming the failing path."""
    counter = [0]
    return _node(rule, "", 0, counter)


def _join(path: str, part: str) -> str:
    return f"{path}.{part}" if path else part


def _node(raw: Any, path: str, depth: int, counter: list[int]) -> Node:
    if depth > MAX_DEPTH:
        raise RuleError(path, f"rules nest at most {MAX_DEPTH} levels")
    if not isinstance(raw, dict):
        raise RuleError(path, "a condition is a JSON object")
    for combinator in ("all", "any"):
        if combinator in raw:
            _only(raw, path, {combinator})
            items = raw[combinator]
            if not isinstance(items, list):
                raise RuleError(_join(path, combinator), "a list of conditions")
            children = tuple(
                _node(item, _join(path, f"{combinator}[{i}]"), depth + 1, counter)
                for i, item in enumerate(items)
            )
            return All(path, children) if combinator == "all" else AnyOf(path, children)
    if "not" in raw:
        _only(raw, path, {"not"})
        return Not(path, _node(raw["not"], _join(path, "not"), depth + 1, counter))
    counter[0] += 1
    if counter[0] > MAX_LEAVES:
        raise RuleError(path, f"a rule has at most {MAX_LEAVES} conditions")
    if "tag" in raw:
        return _tag(raw, path)
    if "event" in raw:
        return _event(raw, path)
    if "field" in raw:
        return _field(raw, path)
    if "in_group" in raw:
        _only(raw, path, {"in_group"})
        return GroupLeaf(path, raw, _text(raw["in_group"], _join(path, "in_group")))
    if "segment" in raw:
        _only(raw, path, {"segment"})
        return SegmentLeaf(path, raw, _id(raw["segment"], _join(path, "segment")))
    raise RuleError(
        path,
        "unknown condition: use all, any, not, tag, event, field, in_group or segment",
    )


def _only(raw: dict[str, Any], path: str, allowed: set[str]) -> None:
    for key in raw:
        if key not in allowed:
            raise RuleError(_join(path, str(key)), "unknown key here")


def _id(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ID:
        raise RuleError(path, "an id (a positive integer)")
    return value


def _text(value: Any, path: str) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_TEXT:
        raise RuleError(path, f"a string of 1 to {MAX_TEXT} characters")
    return value


def _number(value: Any, path: str) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RuleError(path, "a number")
    return value


def _days(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WINDOW_DAYS:
        raise RuleError(path, f"a whole number of days, 1 to {MAX_WINDOW_DAYS}")
    return value


def _scalar(value: Any, path: str) -> Scalar:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return _number(value, path)
    if isinstance(value, str):
        if len(value) > MAX_TEXT:
            raise RuleError(path, f"at most {MAX_TEXT} characters")
        return value
    raise RuleError(path, "a string, number, boolean or null")


def _tag(raw: dict[str, Any], path: str) -> TagLeaf:
    _only(raw, path, {"tag", "min_weight"})
    tag_id = _id(raw["tag"], _join(path, "tag"))
    min_weight = None
    if "min_weight" in raw:
        min_weight = float(_number(raw["min_weight"], _join(path, "min_weight")))
    return TagLeaf(path, raw, tag_id, min_weight)


def _event(raw: dict[str, Any], path: str) -> EventLeaf:
    _only(raw, path, {"event", "count", "within_days", "where"})
    event_type = _text(raw["event"], _join(path, "event"))
    count = Count(gte=1)
    if "count" in raw:
        count_path = _join(path, "count")
        bounds = raw["count"]
        if not isinstance(bounds, dict) or not bounds:
            raise RuleError(count_path, "an object of gte, lte and/or eq")
        found: dict[str, int] = {}
        for op, value in bounds.items():
            if op not in ("gte", "lte", "eq"):
                raise RuleError(_join(count_path, str(op)), "unknown bound: use gte, lte or eq")
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
                raise RuleError(_join(count_path, op), f"a whole number, 0 to {MAX_COUNT}")
            found[op] = value
        count = Count(**found)
    within = None
    if "within_days" in raw:
        within = _days(raw["within_days"], _join(path, "within_days"))
    where: list[tuple[str, Scalar]] = []
    if "where" in raw:
        where_path = _join(path, "where")
        given = raw["where"]
        if not isinstance(given, dict) or not 1 <= len(given) <= MAX_WHERE_KEYS:
            raise RuleError(where_path, f"an object of 1 to {MAX_WHERE_KEYS} properties")
        for key, value in given.items():
            key_path = _join(where_path, str(key))
            if not 1 <= len(str(key)) <= MAX_TEXT:
                raise RuleError(key_path, f"property names have 1 to {MAX_TEXT} characters")
            if value is None:
                raise RuleError(key_path, "a string, number or boolean")
            where.append((str(key), _scalar(value, key_path)))
    return EventLeaf(path, raw, event_type, count, within, tuple(sorted(where)))


def field_kind(name: str) -> tuple[str, str | None, str] | None:
    """(column, key, kind) of a field a rule may name, None if it is unknown."""
    if name in FIELD_KINDS:
        return name, None, FIELD_KINDS[name]
    prefix, dot, key = name.partition(".")
    if dot and prefix in PREFIX_KINDS and 1 <= len(key) <= MAX_TEXT:
        return prefix, key, PREFIX_KINDS[prefix]
    return None


def profile_has_column(column: str) -> bool:
    """Whether the read model has the column yet (RFM and health come with the profile
    part's scores; until then a condition on them never holds)."""
    return column in TaggingProfile.__table__.c


def _field(raw: dict[str, Any], path: str) -> FieldLeaf:
    name = raw["field"]
    name_path = _join(path, "field")
    if not isinstance(name, str):
        raise RuleError(name_path, "a field name")
    known = field_kind(name)
    if known is None:
        fields = ", ".join([*FIELD_KINDS, "consent.<channel>", "attributes.<key>"])
        raise RuleError(name_path, f"unknown field {name!r}; known: {fields}")
    column, key, kind = known
    ops = set(raw) - {"field"}
    allowed = {"time": {"within_days", "gte", "lte"}}.get(kind, {"eq", "in", "gte", "lte"})
    if kind in ("text", "consent"):
        allowed = {"eq", "in"}
    for op in ops:
        if op not in allowed:
            raise RuleError(_join(path, op), f"{name} takes {', '.join(sorted(allowed))}")
    if not ops:
        raise RuleError(path, f"{name} needs one of {', '.join(sorted(allowed))}")
    if "eq" in ops and len(ops) > 1:
        raise RuleError(_join(path, "eq"), "eq stands alone")
    if "in" in ops and len(ops) > 1:
        raise RuleError(_join(path, "in"), "in stands alone")
    if "within_days" in ops and len(ops) > 1:
        raise RuleError(_join(path, "within_days"), "within_days stands alone")
    leaf = FieldLeaf(path, raw, name, column, key, kind)
    if "within_days" in ops:
        days = _days(raw["within_days"], _join(path, "within_days"))
        return FieldLeaf(path, raw, name, column, key, kind, within_days=days)
    if "eq" in ops:
        value = _field_value(raw["eq"], _join(path, "eq"), leaf, allow_null=True)
        return FieldLeaf(path, raw, name, column, key, kind, eq=value, has_eq=True)
    if "in" in ops:
        values = raw["in"]
        in_path = _join(path, "in")
        if not isinstance(values, list) or not 1 <= len(values) <= MAX_IN_VALUES:
            raise RuleError(in_path, f"a list of 1 to {MAX_IN_VALUES} values")
        checked = tuple(
            _field_value(v, f"{in_path}[{i}]", leaf, allow_null=False) for i, v in enumerate(values)
        )
        return FieldLeaf(path, raw, name, column, key, kind, values=checked)
    gte = lte = None
    if "gte" in ops:
        gte = _bound(raw["gte"], _join(path, "gte"), kind)
    if "lte" in ops:
        lte = _bound(raw["lte"], _join(path, "lte"), kind)
    return FieldLeaf(path, raw, name, column, key, kind, gte=gte, lte=lte)


def _field_value(value: Any, path: str, leaf: FieldLeaf, *, allow_null: bool) -> Any:
    if value is None:
        if not allow_null:
            raise RuleError(path, "a value (null only with eq)")
        return None
    if leaf.kind == "text":
        text = _text(value, path)
        if leaf.column == "lifecycle_stage" and text not in LIFECYCLE_STAGES:
            raise RuleError(path, f"a lifecycle stage: {', '.join(LIFECYCLE_STAGES)}")
        return text
    if leaf.kind == "consent":
        if value not in CONSENT_STATUSES:
            raise RuleError(path, f"a consent status: {', '.join(CONSENT_STATUSES)}")
        return value
    if leaf.kind == "number":
        return _number(value, path)
    return _scalar(value, path)


def _bound(value: Any, path: str, kind: str) -> Any:
    if kind == "time":
        if not isinstance(value, str):
            raise RuleError(path, "an ISO 8601 date-time with its offset")
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise RuleError(path, "an ISO 8601 date-time with its offset") from None
        if moment.tzinfo is None:
            raise RuleError(path, "an ISO 8601 date-time with its offset")
        if not 1970 <= moment.year <= 2100:
            raise RuleError(path, "a date-time from 1970 to 2100")
        return moment
    return _number(value, path)


def leaves(node: Node) -> Iterator[Leaf]:
    if isinstance(node, All | AnyOf):
        for child in node.children:
            yield from leaves(child)
    elif isinstance(node, Not):
        yield from leaves(node.child)
    else:
        yield node


def reads(node: Node) -> list[str]:
    """The facts the rule reads, as segments.reads stores them. Every rule also reads
    `field:created_at`, which a new contact's profile records: a new contact is
    evaluated against every segment (a rule of negations holds for it)."""
    found = {"field:created_at"}
    for leaf in leaves(node):
        if isinstance(leaf, TagLeaf):
            found.add(f"tag:{leaf.tag_id}")
        elif isinstance(leaf, EventLeaf):
            found.add(f"event:{leaf.event_type}")
        elif isinstance(leaf, FieldLeaf):
            found.add(f"field:{leaf.column}")
        elif isinstance(leaf, GroupLeaf):
            found.add(f"group:{leaf.chat_id}")
        else:
            found.add(f"segment:{leaf.segment_id}")
    return sorted(found)


def is_timed(node: Node) -> bool:
    """Whether the passage of time alone can change the rule's answer."""
    for leaf in leaves(node):
        if isinstance(leaf, EventLeaf) and leaf.within_days is not None:
            return True
        if isinstance(leaf, FieldLeaf) and leaf.within_days is not None:
            return True
        if isinstance(leaf, TagLeaf) and leaf.min_weight is not None:
            return True
    return False


def tag_ids(node: Node) -> list[tuple[str, int]]:
    return [(leaf.path, leaf.tag_id) for leaf in leaves(node) if isinstance(leaf, TagLeaf)]


def segment_ids(node: Node) -> list[tuple[str, int]]:
    return [(leaf.path, leaf.segment_id) for leaf in leaves(node) if isinstance(leaf, SegmentLeaf)]
