"""The journey contract: JSON in, a checked graph of steps out.

    {"trigger": {"type": "contact.added"},
     "steps": [{"id": "s1", "type": "action", "action": "send", "channel": "wecom_welcome",
                "content": {"text": "欢迎 {{name}}"}, "next": "s2"},
               {"id": "s2", "type": "wait", "seconds": 30, "next": "s3"},
               {"id": "s3", "type": "action", "action": "send", "channel": "wecom_single",
                "content": {"text": "..."}}],
     "reentry": {"policy": "once"}, "goals": [{"event": "order.paid"}]}

The first step is the entry; a step without `next` (or with `null`) ends the journey.
`parse` checks shapes, values and the graph (every branch names a step, every step
is reachable, no cycle without a wait) and names the failing path (`steps[2].next`,
`trigger.cron`). Whether the tags, segments and event types it names exist is the
service's check (it needs the database); `references` lists them with their paths.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any

from croniter import croniter  # type: ignore[import-untyped]

from shared.catalog import catalog
from shared.errors import InvalidInput

MAX_STEPS = 200
MAX_TEXT = 4000
MAX_WHERE_KEYS = 10
MAX_LIST = 500
MAX_SECONDS = 366 * 86400
MAX_DAYS = 3650
MAX_POINTS = 1_000_000
MAX_ID = 2**63 - 1
STEP_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
EVENT_TYPE = re.compile(r"[a-z][a-z0-9_]*(\.[a-z0-9_]+)*")
CLOCK = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")

TRIGGERS = (
    "contact.added",
    "group.joined",
    "tag.added",
    "tag.removed",
    "segment.entered",
    "segment.left",
    "event",
    "schedule",
    "manual",
)
# Besides the business events, what an `event` trigger may start on.
MORE_EVENT_TRIGGERS = ("contact.lifecycle_changed", "tier.changed", "referral.succeeded")


@functools.cache
def event_triggers() -> tuple[str, ...]:
    """What an `event` trigger may name: the business events of the event catalog (the
    users service republishes each stored one under its own type; a brand's
    `custom.<name>` too) and MORE_EVENT_TRIGGERS."""
    business = [
        t.name
        for t in catalog().inbound("events")
        if not t.name.startswith("consent.") and t.name != "custom.*"
    ]
    return (*business, *MORE_EVENT_TRIGGERS)


STEP_TYPES = ("wait", "wait_for", "condition", "split", "action", "exit")
ACTIONS = ("send", "add_tag", "remove_tag", "award_points", "create_task", "call_webhook")
# Each channel and the users service's consent channel a send on it needs.
CHANNELS = {
    "wecom_welcome": "wecom",
    "wecom_single": "wecom",
    "wecom_group": "wecom_group",
    "wecom_moment": "moments",
    "sms": "sms",
    "in_app": "in_app",
    "webhook": "webhook",
}
# What a message template may say about its contact, rendered per contact at send time.
VARIABLES = ("name", "points_balance", "expiring_points", "expiring_at", "coupon")
_VARIABLE = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
REENTRY = ("once", "once_per_days", "every_time")
OVER_QUOTA = ("skip", "postpone")
WHEN_LOST = ("exit", "stay")
WHEN_OPTED_OUT = ("skip", "exit")
# Steps after which the journey waits: a cycle must pass through one.
WAITING = ("wait", "wait_for")

Scalar = str | int | float | bool | None


class JourneyError(InvalidInput):
    code = "invalid_journey"

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}", details={"path": path})
        self.path = path


@dataclass(frozen=True)
class References:
    """What the journey names that lives elsewhere, each with its path."""

    tags: list[tuple[str, int]] = field(default_factory=list)
    segments: list[tuple[str, int]] = field(default_factory=list)
    event_types: list[tuple[str, str]] = field(default_factory=list)
    # Condition rules (tagging's segment rule contract), checked by the tagging service.
    rules: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


@dataclass(frozen=True)
class Journey:
    """A checked definition: `raw` is what is stored (normalised), the rest is derived."""

    raw: dict[str, Any]
    trigger_type: str
    entry: str
    steps: dict[str, dict[str, Any]]
    references: References


def parse(raw: Any) -> Journey:
    """The checked journey, or JourneyError naming the failing path."""
    if not isinstance(raw, dict):
        raise JourneyError("journey", "must be an object")
    _only(raw, "journey", {"trigger", "steps", "reentry", "goals", "when_lost", "when_opted_out"})
    refs = References()
    trigger = _trigger(raw.get("trigger"), refs)
    steps_raw = raw.get("steps")
    if not isinstance(steps_raw, list) or not steps_raw:
        raise JourneyError("steps", "must be a non-empty list of steps")
    if len(steps_raw) > MAX_STEPS:
        raise JourneyError("steps", f"at most {MAX_STEPS} steps")
    steps: dict[str, dict[str, Any]] = {}
    paths: dict[str, str] = {}
    ordered = []
    for i, step_raw in enumerate(steps_raw):
        path = f"steps[{i}]"
        step = _step(step_raw, path, refs)
        if step["id"] in steps:
            raise JourneyError(f"{path}.id", f"step id {step['id']!r} is used twice")
        steps[step["id"]] = step
        paths[step["id"]] = path
        ordered.append(step)
    _check_graph(ordered, steps, paths)
    normal: dict[str, Any] = {
        "trigger": trigger,
        "steps": ordered,
        "reentry": _reentry(raw.get("reentry")),
        "goals": _goals(raw.get("goals"), refs),
        "when_lost": _choice(raw.get("when_lost", "exit"), "when_lost", WHEN_LOST),
        "when_opted_out": _choice(
            raw.get("when_opted_out", "skip"), "when_opted_out", WHEN_OPTED_OUT
        ),
    }
    return Journey(normal, trigger["type"], ordered[0]["id"], steps, refs)


def successors(step: dict[str, Any]) -> list[tuple[str, str | None]]:
    """The step's branches: (field, the step it leads to or None for the end)."""
    kind = step["type"]
    if kind == "condition":
        return [("yes", step.get("yes")), ("no", step.get("no"))]
    if kind == "wait_for":
        return [("on_event", step.get("on_event")), ("on_timeout", step.get("on_timeout"))]
    if kind == "split":
        return [(f"variants[{i}].next", v.get("next")) for i, v in enumerate(step["variants"])]
    if kind == "exit":
        return []
    return [("next", step.get("next"))]


# -- trigger ---------------------------------------------------------------------------------


def _trigger(raw: Any, refs: References) -> dict[str, Any]:
    path = "trigger"
    if not isinstance(raw, dict):
        raise JourneyError(path, "must be an object with a type")
    kind = _choice(raw.get("type"), f"{path}.type", TRIGGERS)
    out: dict[str, Any] = {"type": kind}
    if kind == "contact.added":
        _only(raw, path, {"type", "states"})
        if "states" in raw:
            out["states"] = _strings(raw["states"], f"{path}.states")
    elif kind == "group.joined":
        _only(raw, path, {"type", "chat_ids"})
        if "chat_ids" in raw:
            out["chat_ids"] = _strings(raw["chat_ids"], f"{path}.chat_ids")
    elif kind in ("tag.added", "tag.removed"):
        _only(raw, path, {"type", "tag_id"})
        out["tag_id"] = _db_id(raw.get("tag_id"), f"{path}.tag_id")
        refs.tags.append((f"{path}.tag_id", out["tag_id"]))
    elif kind in ("segment.entered", "segment.left"):
        _only(raw, path, {"type", "segment_id"})
        out["segment_id"] = _db_id(raw.get("segment_id"), f"{path}.segment_id")
        refs.segments.append((f"{path}.segment_id", out["segment_id"]))
    elif kind == "event":
        _only(raw, path, {"type", "event_type", "where"})
        out["event_type"] = _event_type(raw.get("event_type"), f"{path}.event_type")
        allowed = event_triggers()
        if out["event_type"] not in allowed and not out["event_type"].startswith("custom."):
            raise JourneyError(
                f"{path}.event_type",
                f"a journey starts on one of {', '.join(allowed)}, custom.<name> "
                "(or a dedicated trigger type)",
            )
        refs.event_types.append((f"{path}.event_type", out["event_type"]))
        out["where"] = _where(raw.get("where"), f"{path}.where")
    elif kind == "schedule":
        _only(raw, path, {"type", "cron", "segment_id"})
        cron = raw.get("cron")
        if not isinstance(cron, str) or len(cron.split()) != 5 or not croniter.is_valid(cron):
            raise JourneyError(
                f"{path}.cron",
                "must be a cron expression of 5 fields (minute hour day month weekday), "
                "in the tenant's time zone",
            )
        out["cron"] = " ".join(cron.split())
        out["segment_id"] = _db_id(raw.get("segment_id"), f"{path}.segment_id")
        refs.segments.append((f"{path}.segment_id", out["segment_id"]))
    else:  # manual: ops enrol a segment or a list (POST /v1/campaigns/{id}/enrol)
        _only(raw, path, {"type"})
    return out


# -- steps -----------------------------------------------------------------------------------


def _step(raw: Any, path: str, refs: References) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise JourneyError(path, "must be an object with an id and a type")
    step_id = raw.get("id")
    if not isinstance(step_id, str) or not STEP_ID.fullmatch(step_id):
        raise JourneyError(f"{path}.id", "must be 1-64 letters, digits, '_' or '-'")
    kind = _choice(raw.get("type"), f"{path}.type", STEP_TYPES)
    out: dict[str, Any] = {"id": step_id, "type": kind}
    if kind == "wait":
        _only(raw, path, {"id", "type", "seconds", "days", "until", "next"})
        given = [k for k in ("seconds", "days", "until") if k in raw]
        if len(given) != 1:
            raise JourneyError(path, "a wait has exactly one of seconds, days or until")
        key = given[0]
        if key == "until":
            out["until"] = _clock(raw["until"], f"{path}.until")
        else:
            top = MAX_SECONDS if key == "seconds" else MAX_DAYS
            out[key] = _int(raw[key], f"{path}.{key}", 1, top)
        out["next"] = _next(raw, path)
    elif kind == "wait_for":
        _only(raw, path, {"id", "type", "event", "where", "timeout", "on_event", "on_timeout"})
        out["event"] = _event_type(raw.get("event"), f"{path}.event")
        refs.event_types.append((f"{path}.event", out["event"]))
        out["where"] = _where(raw.get("where"), f"{path}.where")
        out["timeout"] = _duration(raw.get("timeout"), f"{path}.timeout")
        out["on_event"] = _next(raw, path, "on_event")
        out["on_timeout"] = _next(raw, path, "on_timeout")
    elif kind == "condition":
        _only(raw, path, {"id", "type", "rule", "yes", "no"})
        rule = raw.get("rule")
        if not isinstance(rule, dict) or not rule:
            raise JourneyError(f"{path}.rule", "must be a segment rule (an object)")
        out["rule"] = rule
        refs.rules.append((f"{path}.rule", rule))
        out["yes"] = _next(raw, path, "yes")
        out["no"] = _next(raw, path, "no")
    elif kind == "split":
        _only(raw, path, {"id", "type", "variants", "holdout"})
        out["variants"] = _variants(raw.get("variants"), f"{path}.variants")
        holdout = raw.get("holdout", 0)
        if (
            not isinstance(holdout, int | float)
            or isinstance(holdout, bool)
            or not 0 <= holdout < 1
        ):
            raise JourneyError(f"{path}.holdout", "must be a share from 0 up to (not) 1")
        out["holdout"] = float(holdout)
    elif kind == "action":
        out.update(_action(raw, path, refs))
        out["next"] = _next(raw, path)
    else:  # exit
        _only(raw, path, {"id", "type"})
    return out


def _action(raw: dict[str, Any], path: str, refs: References) -> dict[str, Any]:
    action = _choice(raw.get("action"), f"{path}.action", ACTIONS)
    common = {"id", "type", "action", "next"}
    out: dict[str, Any] = {"action": action}
    if action == "send":
        _only(raw, path, common | {"channel", "content", "over_quota"})
        out["channel"] = _choice(raw.get("channel"), f"{path}.channel", tuple(CHANNELS))
        out["content"] = _content(raw.get("content"), f"{path}.content")
        out["over_quota"] = _choice(raw.get("over_quota", "skip"), f"{path}.over_quota", OVER_QUOTA)
    elif action in ("add_tag", "remove_tag"):
        allowed = common | {"tag_id"} | ({"weight"} if action == "add_tag" else set())
        _only(raw, path, allowed)
        out["tag_id"] = _db_id(raw.get("tag_id"), f"{path}.tag_id")
        refs.tags.append((f"{path}.tag_id", out["tag_id"]))
        if "weight" in raw:
            weight = raw["weight"]
            if not isinstance(weight, int | float) or isinstance(weight, bool) or weight <= 0:
                raise JourneyError(f"{path}.weight", "must be a positive number")
            out["weight"] = weight
    elif action == "award_points":
        _only(raw, path, common | {"points", "reason"})
        out["points"] = _int(raw.get("points"), f"{path}.points", 1, MAX_POINTS)
        out["reason"] = _text(raw.get("reason", "campaign"), f"{path}.reason", 100)
    elif action == "create_task":
        _only(raw, path, common | {"title", "due_in_hours"})
        out["title"] = _template(raw.get("title"), f"{path}.title", 200)
        out["due_in_hours"] = _int(raw.get("due_in_hours", 24), f"{path}.due_in_hours", 1, 720)
    else:  # call_webhook
        _only(raw, path, common | {"url"})
        url = raw.get("url")
        if (
            not isinstance(url, str)
            or len(url) > 2000
            or not re.fullmatch(r"https?://[^\s/?#]+[^\s]*", url)
        ):
            raise JourneyError(f"{path}.url", "must be an http(s) URL")
        out["url"] = url
    return out


def _content(raw: Any, path: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise JourneyError(path, "must be an object with a text")
    _only(raw, path, {"text"})
    return {"text": _template(raw.get("text"), f"{path}.text", MAX_TEXT)}


def _template(raw: Any, path: str, longest: int) -> str:
    """Message text whose {{variables}} are all known (checked now, not at send time)."""
    text = _text(raw, path, longest)
    for name in _VARIABLE.findall(text):
        if name not in VARIABLES:
            raise JourneyError(
                path, f"unknown variable {{{{{name}}}}}; one of {', '.join(VARIABLES)}"
            )
    if "{{" in _VARIABLE.sub("", text) or "}}" in _VARIABLE.sub("", text):
        raise JourneyError(path, "unbalanced {{ }} in the text")
    return text


def check_template(raw: Any, path: str, longest: int) -> str:
    """A message template whose variables are all known (JourneyError otherwise)."""
    return _template(raw, path, longest)


def _variants(raw: Any, path: str) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not 2 <= len(raw) <= 10:
        raise JourneyError(path, "must be a list of 2 to 10 variants")
    out = []
    names = set()
    for i, variant in enumerate(raw):
        where = f"{path}[{i}]"
        if not isinstance(variant, dict):
            raise JourneyError(where, "must be an object with a name, a weight and a next")
        _only(variant, where, {"name", "weight", "next"})
        name = _text(variant.get("name"), f"{where}.name", 50)
        if name in names:
            raise JourneyError(f"{where}.name", f"variant {name!r} is named twice")
        names.add(name)
        weight = _int(variant.get("weight"), f"{where}.weight", 1, 10_000)
        out.append({"name": name, "weight": weight, "next": _next(variant, where)})
    return out


def _check_graph(
    ordered: list[dict[str, Any]], steps: dict[str, dict[str, Any]], paths: dict[str, str]
) -> None:
    for step in ordered:
        for where, target in successors(step):
            if target is not None and target not in steps:
                raise JourneyError(f"{paths[step['id']]}.{where}", f"no step {target!r}")
    # Reachable from the entry.
    seen = {ordered[0]["id"]}
    todo = [ordered[0]["id"]]
    while todo:
        for _, target in successors(steps[todo.pop()]):
            if target is not None and target not in seen:
                seen.add(target)
                todo.append(target)
    for step in ordered:
        if step["id"] not in seen:
            raise JourneyError(paths[step["id"]], "no branch leads to this step")
    # A cycle must pass through a wait: without one a contact would loop at once, forever.
    state: dict[str, int] = {}

    def visit(step_id: str) -> None:
        state[step_id] = 1
        step = steps[step_id]
        if step["type"] not in WAITING:
            for _, target in successors(step):
                if target is None:
                    continue
                if state.get(target) == 1:
                    raise JourneyError(
                        paths[target], "a cycle through this step has no wait or wait_for"
                    )
                if target not in state:
                    visit(target)
        state[step_id] = 2

    for step in ordered:
        if step["id"] not in state:
            visit(step["id"])


# -- the rest --------------------------------------------------------------------------------


def _reentry(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {"policy": "once"}
    if not isinstance(raw, dict):
        raise JourneyError("reentry", "must be an object with a policy")
    _only(raw, "reentry", {"policy", "days"})
    policy = _choice(raw.get("policy"), "reentry.policy", REENTRY)
    if policy == "once_per_days":
        return {"policy": policy, "days": _int(raw.get("days"), "reentry.days", 1, MAX_DAYS)}
    if "days" in raw:
        raise JourneyError("reentry.days", "only with the policy once_per_days")
    return {"policy": policy}


def _goals(raw: Any, refs: References) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list) or len(raw) > 10:
        raise JourneyError("goals", "must be a list of at most 10 goals")
    out = []
    for i, goal in enumerate(raw):
        path = f"goals[{i}]"
        if not isinstance(goal, dict):
            raise JourneyError(path, "must be an object with an event")
        _only(goal, path, {"event", "where"})
        event = _event_type(goal.get("event"), f"{path}.event")
        refs.event_types.append((f"{path}.event", event))
        out.append({"event": event, "where": _where(goal.get("where"), f"{path}.where")})
    return out


def _duration(raw: Any, path: str) -> dict[str, int]:
    if not isinstance(raw, dict) or len(raw) != 1:
        raise JourneyError(path, 'must be {"seconds": N} or {"days": N}')
    ((key, value),) = raw.items()
    if key == "seconds":
        return {"seconds": _int(value, f"{path}.seconds", 1, MAX_SECONDS)}
    if key == "days":
        return {"days": _int(value, f"{path}.days", 1, MAX_DAYS)}
    raise JourneyError(path, 'must be {"seconds": N} or {"days": N}')


def _next(raw: dict[str, Any], path: str, key: str = "next") -> str | None:
    target = raw.get(key)
    if target is None:
        return None
    if not isinstance(target, str) or not STEP_ID.fullmatch(target):
        raise JourneyError(f"{path}.{key}", "must be a step id or null (the end)")
    return target


def _where(raw: Any, path: str) -> dict[str, Scalar]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or len(raw) > MAX_WHERE_KEYS:
        raise JourneyError(path, f"must be an object of at most {MAX_WHERE_KEYS} properties")
    for key, value in raw.items():
        if not isinstance(key, str) or not 1 <= len(key) <= 100:
            raise JourneyError(path, "property names are 1-100 characters")
        if not isinstance(value, str | int | float | bool) and value is not None:
            raise JourneyError(f"{path}.{key}", "must be a string, number, boolean or null")
        if isinstance(value, str) and len(value) > 200:
            raise JourneyError(f"{path}.{key}", "at most 200 characters")
    return dict(raw)


def _event_type(raw: Any, path: str) -> str:
    if not isinstance(raw, str) or len(raw) > 100 or not EVENT_TYPE.fullmatch(raw):
        raise JourneyError(path, "must be an event type such as order.paid")
    return raw


def _clock(raw: Any, path: str) -> str:
    if not isinstance(raw, str) or not CLOCK.fullmatch(raw):
        raise JourneyError(path, "must be a time of day HH:MM (24 h, the tenant's time zone)")
    return raw


def _choice(raw: Any, path: str, allowed: tuple[str, ...]) -> str:
    if raw not in allowed:
        raise JourneyError(path, f"must be one of {', '.join(allowed)}")
    return str(raw)


def _int(raw: Any, path: str, low: int, high: int) -> int:
    if not isinstance(raw, int) or isinstance(raw, bool) or not low <= raw <= high:
        raise JourneyError(path, f"must be a whole number from {low} to {high}")
    return raw


def _db_id(raw: Any, path: str) -> int:
    return _int(raw, path, 1, MAX_ID)


def _text(raw: Any, path: str, longest: int) -> str:
    if not isinstance(raw, str) or not raw.strip() or len(raw) > longest:
        raise JourneyError(path, f"must be a text of 1 to {longest} characters")
    return raw


def _strings(raw: Any, path: str) -> list[str]:
    if (
        not isinstance(raw, list)
        or not 1 <= len(raw) <= MAX_LIST
        or not all(isinstance(v, str) and 1 <= len(v) <= 100 for v in raw)
    ):
        raise JourneyError(path, f"must be a list of 1 to {MAX_LIST} texts")
    return list(dict.fromkeys(raw))


def _only(raw: dict[str, Any], path: str, allowed: set[str]) -> None:
    extra = sorted(set(raw) - allowed)
    if extra:
        raise JourneyError(
            f"{path}.{extra[0]}", f"unknown field; allowed: {', '.join(sorted(allowed))}"
        )
