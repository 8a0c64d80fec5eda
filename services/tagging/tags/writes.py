"""The set-based write API of contact tags, for every part that changes them: the
HTTP routes, bulk tagging, the tag rules, the WeCom mirror.

    result = await apply_tag_writes(session, tenant_id, writes, changes, now)

A call takes any number of writes and costs a handful of statements: it locks the
contact tags they touch (and, for exclusive groups, the contacts' other tags of
those groups), folds the writes over them in order, then stores the outcome with
one statement per kind of change (insert, update, delete, history, outbox).

- `raise` adds `weight` to the CURRENT (decayed) weight, at most `cap`: the new
  stored weight is min(cap, current + weight), anchored at `now`. A positive raise
  never lowers a weight that is already above its cap (a tag set by hand above a
  rule's cap keeps its weight).
- `set` stores `weight` as it is; `ensure` adds the tag at `weight` (default 1)
  when the contact does not hold it and leaves a held one as it is; `remove`
  removes it. A write leaving a weight below 0.000001 removes the tag; weights
  never exceed 1,000,000.
- Several writes for the same (contact, tag) combine in the order given.
- A tag added in an exclusive group removes the contact's other tags of that group
  (tag.removed, reason "exclusive").
- The row's source becomes the last writer's; a manual tag does not decay unless
  its group has `decay_manual`.

Every net change publishes tag.added / tag.removed / tag.weight_changed through the
outbox, writes contact_tag_history (one row per write that changed something, with
its cause) and records ("tag", id) in `changes`. It does not re-evaluate segments:
its callers do, once per batch or request.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy.ext.asyncio import AsyncSession

from services.tagging.facts import Changes, tag_fact
from services.tagging.tags import repository
from services.tagging.tags.exceptions import ConcurrentTagWrites
from services.tagging.tags.schemas import MAX_WEIGHT, MIN_WEIGHT

DEFAULT_WEIGHT = 1.0
# Removal reasons a write may give in its cause ({"reason": "wecom"}); otherwise its
# source says why.
REMOVAL_REASONS = ("manual", "decayed", "exclusive", "erased", "merged", "wecom", "rule", "deleted")
_REASON_OF_SOURCE = {"manual": "manual", "import": "manual", "rule": "rule", "wecom": "wecom"}
# Two weights this close are the same (a set repeated a moment later, its decay aside).
_RELATIVE_TOLERANCE = 1e-6
_ATTEMPTS = 5
# A drop further away than this (about 2,700 years) is stored as this far.
_LONGEST_DAYS = 1_000_000.0


@dataclass(frozen=True)
class TagWrite:
    contact_id: uuid.UUID
    tag_id: int
    mode: Literal["raise", "set", "remove", "ensure"]
    weight: float | None = None  # raise: the increment; set/ensure: the new weight
    cap: float | None = None  # raise: the weight never goes above cap
    source: str = "manual"  # manual | rule | import | wecom | campaign
    cause: Mapping[str, Any] = field(default_factory=dict)  # -> history, e.g. {"rule_id": 3}


@dataclass(frozen=True)
class TagWriteResult:
    """Net outcome per (contact, tag): added, updated (weight or source changed),
    removed (exclusive removals included), unchanged; `skipped` counts writes naming
    a tag the tenant does not have (or a weight or cap that is not a finite number)."""

    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: int = 0


@dataclass
class _State:
    present: bool
    weight: float = 0.0
    weighted_at: datetime | None = None
    half_life_days: float | None = None
    source: str = "manual"
    first_raised_at: datetime | None = None
    last_raised_at: datetime | None = None
    reason: str = "manual"
    dirty: bool = False


def drops_at(
    weight: float, weighted_at: datetime, half_life_days: float | None, floor: float
) -> datetime | None:
    """When a decaying weight falls below the floor (None: it never does)."""
    if half_life_days is None or floor <= 0:
        return None
    if weight < floor:
        return weighted_at
    days = half_life_days * math.log2(weight / floor)
    return weighted_at + timedelta(days=min(days, _LONGEST_DAYS))


def _finite(value: float | None) -> bool:
    return value is None or math.isfinite(value)


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= _RELATIVE_TOLERANCE * max(1.0, abs(a), abs(b))


async def apply_tag_writes(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    writes: Sequence[TagWrite],
    changes: Changes,
    now: datetime,
) -> TagWriteResult:
    """Apply the writes in order, set-based (see the module's docstring)."""
    if not writes:
        return TagWriteResult()
    tags = await repository.tag_settings(session, tenant_id, {w.tag_id for w in writes})
    known = [w for w in writes if w.tag_id in tags and _finite(w.weight) and _finite(w.cap)]
    skipped = len(writes) - len(known)
    if not known:
        return TagWriteResult(skipped=skipped)
    for _ in range(_ATTEMPTS):
        plan = await _plan(session, tenant_id, known, tags, now)
        if await repository.insert_contact_tags(session, tenant_id, plan.inserts):
            break
    else:
        raise ConcurrentTagWrites()
    await repository.update_contact_tags(session, tenant_id, plan.updates)
    await repository.delete_contact_tags(session, tenant_id, plan.deletes)
    await repository.insert_history(session, tenant_id, plan.history)
    await repository.publish_tag_events(session, tenant_id, plan.events, now)
    for contact_id, tag_id in plan.changed:
        changes.add(tenant_id, contact_id, tag_fact(tag_id))
    return TagWriteResult(
        added=len(plan.inserts),
        updated=len(plan.updates),
        removed=len(plan.deletes),
        unchanged=plan.unchanged,
        skipped=skipped,
    )


@dataclass
class _Plan:
    inserts: list[repository.ContactTagRow] = field(default_factory=list)
    updates: list[repository.ContactTagRow] = field(default_factory=list)
    deletes: list[tuple[uuid.UUID, int]] = field(default_factory=list)
    history: list[repository.HistoryRow] = field(default_factory=list)
    events: list[repository.TagEventRow] = field(default_factory=list)
    changed: list[tuple[uuid.UUID, int]] = field(default_factory=list)
    unchanged: int = 0


async def _plan(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    writes: Sequence[TagWrite],
    tags: Mapping[int, repository.TagSettings],
    now: datetime,
) -> _Plan:
    """Lock what the writes touch and fold them over it: what to store."""
    keys = {(w.contact_id, w.tag_id) for w in writes}
    exclusive = {
        (w.contact_id, tags[w.tag_id].group_id) for w in writes if tags[w.tag_id].exclusive
    }
    held = await repository.lock_contact_tags(session, tenant_id, keys, exclusive, now)

    original: dict[tuple[uuid.UUID, int], _State] = {}
    state: dict[tuple[uuid.UUID, int], _State] = {}
    in_group: dict[tuple[uuid.UUID, int], set[int]] = {}
    group_of: dict[int, int] = {t: s.group_id for t, s in tags.items()}
    for row in held:
        key = (row.contact_id, row.tag_id)
        group_of[row.tag_id] = row.group_id
        original[key] = _State(
            True,
            row.current,
            row.weighted_at,
            row.half_life_days,
            row.source,
            row.first_raised_at,
            row.last_raised_at,
        )
        state[key] = _State(**vars(original[key]))
        in_group.setdefault((row.contact_id, row.group_id), set()).add(row.tag_id)
    plan = _Plan()

    def remove(
        key: tuple[uuid.UUID, int], reason: str, source: str, cause: Mapping[str, Any]
    ) -> None:
        st = state[key]
        st.present, st.reason, st.dirty = False, reason, True
        in_group.get((key[0], group_of[key[1]]), set()).discard(key[1])
        plan.history.append(
            repository.HistoryRow(
                key[0], key[1], "removed", st.weight, source, {**cause, "reason": reason}, now
            )
        )

    for w in writes:
        key = (w.contact_id, w.tag_id)
        settings = tags[w.tag_id]
        st = state.setdefault(key, _State(False))
        given = w.cause.get("reason")
        reason = given if given in REMOVAL_REASONS else _REASON_OF_SOURCE.get(w.source, "manual")
        if w.mode == "remove":
            if st.present:
                remove(key, str(reason), w.source, w.cause)
            continue
        if w.mode == "ensure":
            if st.present:
                continue
            new = DEFAULT_WEIGHT if w.weight is None else w.weight
        elif w.mode == "set":
            new = DEFAULT_WEIGHT if w.weight is None else w.weight
        else:
            increment = 0.0 if w.weight is None else w.weight
            base = st.weight if st.present else 0.0
            new = base + increment
            if w.cap is not None:
                new = min(w.cap, new)
                if increment >= 0 and st.present and new < base:
                    new = base
        half_life = (
            settings.half_life_days if (w.source != "manual" or settings.decay_manual) else None
        )
        new = min(new, MAX_WEIGHT)
        if new < MIN_WEIGHT:
            if st.present:
                remove(key, str(reason), w.source, w.cause)
            continue
        if (
            st.present
            and _close(new, st.weight)
            and st.source == w.source
            and st.half_life_days == half_life
        ):
            continue
        action = "added" if not st.present else ("raised" if w.mode == "raise" else "set")
        if not st.present:
            st.first_raised_at = now
        st.present, st.weight, st.weighted_at, st.half_life_days = True, new, now, half_life
        st.source, st.last_raised_at, st.dirty = w.source, now, True
        plan.history.append(
            repository.HistoryRow(key[0], key[1], action, new, w.source, w.cause, now)
        )
        if settings.exclusive:
            siblings = in_group.setdefault((w.contact_id, settings.group_id), set())
            for other in sorted(siblings - {w.tag_id}):
                remove((w.contact_id, other), "exclusive", w.source, w.cause)
            siblings.add(w.tag_id)

    for key, st in state.items():
        before = original.get(key)
        contact_id, tag_id = key
        group_id = group_of[tag_id]
        if not st.dirty:
            plan.unchanged += key in keys
            continue
        if st.present:
            assert st.weighted_at is not None and st.first_raised_at is not None
            assert st.last_raised_at is not None
            floor = tags[tag_id].floor if tag_id in tags else 0.0
            stored = repository.ContactTagRow(
                contact_id,
                tag_id,
                st.weight,
                st.weighted_at,
                st.half_life_days,
                st.source,
                st.first_raised_at,
                st.last_raised_at,
                drops_at(st.weight, st.weighted_at, st.half_life_days, floor),
            )
            if before is None:
                plan.inserts.append(stored)
                plan.events.append(
                    repository.TagEventRow(
                        "added", contact_id, tag_id, group_id, st.weight, None, st.source, None
                    )
                )
            else:
                plan.updates.append(stored)
                plan.events.append(
                    repository.TagEventRow(
                        "weight_changed",
                        contact_id,
                        tag_id,
                        group_id,
                        st.weight,
                        before.weight,
                        st.source,
                        None,
                    )
                )
            plan.changed.append(key)
        elif before is not None:
            plan.deletes.append(key)
            plan.events.append(
                repository.TagEventRow(
                    "removed", contact_id, tag_id, group_id, None, None, None, st.reason
                )
            )
            plan.changed.append(key)
        else:
            plan.unchanged += key in keys
    return plan
