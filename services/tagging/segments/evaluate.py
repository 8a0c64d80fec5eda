"""The rule evaluated in Python over one contact's loaded facts, for `explain`: whether
each condition holds, the value it saw and a sentence saying so.

It follows the SQL compiler's semantics (compiler.py) exactly; a property test
holds the two (and a brute force over the raw rows) to the same answers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from services.tagging.segments import rules
from services.tagging.segments.compiler import Moment


@dataclass
class ContactFacts:
    """What a rule can read of one contact: `fields` by column (attributes and consent
    as dicts), current tag weights, the count each event condition (by path) saw,
    groups and segment memberships."""

    live: bool
    fields: dict[str, Any] = field(default_factory=dict)
    tags: dict[int, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    groups: set[str] = field(default_factory=set)
    segments: set[int] = field(default_factory=set)


@dataclass(frozen=True)
class LeafAnswer:
    path: str
    leaf: dict[str, Any]
    holds: bool
    value: Any
    text: str
    # Under an odd number of `not`s: the rule needs the condition not to hold.
    negated: bool = False


def json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values as jsonb compares them (true is not 1; 1 is 1.0)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return type(a) is type(b) and bool(a == b)


def field_value(leaf: rules.FieldLeaf, facts: ContactFacts) -> Any:
    value = facts.fields.get(leaf.column)
    if leaf.key is not None:
        return value.get(leaf.key) if isinstance(value, dict) else None
    return value


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def field_holds(leaf: rules.FieldLeaf, value: Any, moment: Moment) -> bool:
    if leaf.has_eq:
        if leaf.eq is None:
            return value is None
        if value is None:
            return False
        return json_equal(value, leaf.eq) if leaf.kind in ("json", "number") else value == leaf.eq
    if value is None:
        return False
    if leaf.values is not None:
        if leaf.kind in ("json", "number"):
            return any(json_equal(value, v) for v in leaf.values)
        return value in leaf.values
    if leaf.kind == "time":
        if not isinstance(value, datetime):
            return False
        if leaf.within_days is not None:
            return value >= moment.day_start(moment.window_start(leaf.within_days))
        return (leaf.gte is None or value >= leaf.gte) and (leaf.lte is None or value <= leaf.lte)
    if not _number(value):
        return False
    return (leaf.gte is None or value >= leaf.gte) and (leaf.lte is None or value <= leaf.lte)


def evaluate(node: rules.Node, facts: ContactFacts, moment: Moment) -> bool:
    """Whether the contact is a member (a contact that is not live never is)."""
    return facts.live and _holds(node, facts, moment, None, False)


def explain(node: rules.Node, facts: ContactFacts, moment: Moment) -> tuple[bool, list[LeafAnswer]]:
    answers: list[LeafAnswer] = []
    holds = _holds(node, facts, moment, answers, False)
    return facts.live and holds, answers


def _holds(
    node: rules.Node,
    facts: ContactFacts,
    moment: Moment,
    answers: list[LeafAnswer] | None,
    negated: bool,
) -> bool:
    if isinstance(node, rules.All):
        # Every child is looked at (explain lists every condition), not only up to the first.
        results = [_holds(c, facts, moment, answers, negated) for c in node.children]
        return all(results)
    if isinstance(node, rules.AnyOf):
        results = [_holds(c, facts, moment, answers, negated) for c in node.children]
        return any(results)
    if isinstance(node, rules.Not):
        return not _holds(node.child, facts, moment, answers, not negated)
    holds, value, text = _leaf(node, facts, moment)
    if answers is not None:
        if negated:
            text += " (must not hold)"
        answers.append(LeafAnswer(node.path, node.raw, holds, value, text, negated))
    return holds


def _leaf(leaf: rules.Leaf, facts: ContactFacts, moment: Moment) -> tuple[bool, Any, str]:
    if isinstance(leaf, rules.TagLeaf):
        weight = facts.tags.get(leaf.tag_id)
        if leaf.min_weight is None:
            held = weight is not None
            return held, weight, f"tag {leaf.tag_id} {'held' if held else 'not held'}"
        holds = weight is not None and weight >= leaf.min_weight
        seen = "not held" if weight is None else f"weight {weight:g}"
        return holds, weight, f"tag {leaf.tag_id} {seen}, needs ≥{leaf.min_weight:g}"
    if isinstance(leaf, rules.EventLeaf):
        n = facts.counts.get(leaf.path, 0)
        window = f" in {leaf.within_days} days" if leaf.within_days is not None else " ever"
        where = (
            " with " + ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in leaf.where)
            if leaf.where
            else ""
        )
        times = "time" if n == 1 else "times"
        return (
            leaf.count.holds(n),
            n,
            f"{leaf.event_type}{where} {n} {times}{window}, needs {leaf.count.text()}",
        )
    if isinstance(leaf, rules.FieldLeaf):
        value = field_value(leaf, facts)
        holds = field_holds(leaf, value, moment)
        shown = value.isoformat() if isinstance(value, datetime) else value
        return holds, shown, f"{leaf.field} is {_show(shown)}, needs {_needs(leaf)}"
    if isinstance(leaf, rules.GroupLeaf):
        holds = leaf.chat_id in facts.groups
        return holds, holds, f"{'in' if holds else 'not in'} group {leaf.chat_id}"
    holds = leaf.segment_id in facts.segments
    return holds, holds, f"{'in' if holds else 'not in'} segment {leaf.segment_id}"


def _show(value: Any) -> str:
    return "missing" if value is None else json.dumps(value, ensure_ascii=False)


def _needs(leaf: rules.FieldLeaf) -> str:
    if leaf.has_eq:
        return "missing" if leaf.eq is None else f"= {_show(leaf.eq)}"
    if leaf.values is not None:
        return "one of " + ", ".join(_show(v) for v in leaf.values)
    if leaf.within_days is not None:
        return f"within {leaf.within_days} days"
    parts = []
    if leaf.gte is not None:
        parts.append(f"≥{_bound(leaf.gte)}")
    if leaf.lte is not None:
        parts.append(f"≤{_bound(leaf.lte)}")
    return " and ".join(parts)


def _bound(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime) else f"{value:g}"
