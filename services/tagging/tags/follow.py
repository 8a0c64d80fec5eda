"""Contact tags following their contacts: a merged contact's tags move to the
survivor, an erased contact's are removed.

Per tenant in the batch: one statement locks every tag the contacts involved hold,
the batch's merges and erasures are folded over them in order (so a chain of
merges in one batch ends at its last survivor), and the outcome is stored with one
statement per kind of change. A tag both contacts hold keeps the higher current
weight (with that row's decay) and the earliest first_raised_at; in an exclusive
group the survivor keeps the tag of highest current weight.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from services.tagging.facts import Changes, tag_fact
from services.tagging.tags import repository
from shared.events import Event

_Key = tuple[uuid.UUID, int]


@dataclass(frozen=True)
class _Step:
    kind: str  # merge | erase
    contact_id: uuid.UUID  # merge: the merged contact; erase: the erased one
    survivor_id: uuid.UUID | None = None


def _steps(events: list[Event]) -> dict[uuid.UUID, list[_Step]]:
    by_tenant: dict[uuid.UUID, list[_Step]] = defaultdict(list)
    for event in events:
        if event.tenant_id is None:
            continue
        try:
            if event.type == "contact.merged":
                merged = uuid.UUID(str(event.payload["merged_id"]))
                survivor = uuid.UUID(str(event.payload["survivor_id"]))
                if merged != survivor:
                    by_tenant[event.tenant_id].append(_Step("merge", merged, survivor))
            elif event.type == "contact.erased":
                erased = uuid.UUID(str(event.payload["contact_id"]))
                by_tenant[event.tenant_id].append(_Step("erase", erased))
        except (KeyError, ValueError):
            continue  # the users service's payload contract says these are there
    return by_tenant


async def apply(
    session: AsyncSession, events: list[Event], changes: Changes, now: datetime
) -> None:
    """Apply the batch's contact.merged / contact.erased to contact tags."""
    for tenant_id, steps in _steps(events).items():
        await _follow(session, tenant_id, steps, changes, now)


async def _follow(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    steps: list[_Step],
    changes: Changes,
    now: datetime,
) -> None:
    contacts = {s.contact_id for s in steps} | {s.survivor_id for s in steps if s.survivor_id}
    held = await repository.lock_contacts_tags(session, tenant_id, contacts, now)
    if not held:
        return
    original: dict[_Key, repository.StoredTag] = {(t.contact_id, t.tag_id): t for t in held}
    state: dict[_Key, repository.StoredTag] = dict(original)
    reasons: dict[_Key, str] = {}
    history: list[repository.HistoryRow] = []

    def drop(key: _Key, reason: str, cause: dict[str, str]) -> None:
        gone = state.pop(key)
        reasons[key] = reason
        history.append(
            repository.HistoryRow(
                key[0],
                key[1],
                "removed",
                gone.current,
                gone.source,
                {**cause, "reason": reason},
                now,
            )
        )

    for step in steps:
        mine = sorted(k for k in state if k[0] == step.contact_id)
        if step.kind == "erase":
            for key in mine:
                drop(key, "erased", {})
            continue
        assert step.survivor_id is not None
        survivor = step.survivor_id
        cause = {"merged_id": str(step.contact_id), "survivor_id": str(survivor)}
        for key in mine:
            moving = state[key]
            drop(key, "merged", cause)
            target = (survivor, key[1])
            kept = state.get(target)
            if kept is None or moving.current > kept.current:
                first = (
                    moving.first_raised_at
                    if kept is None
                    else min(moving.first_raised_at, kept.first_raised_at)
                )
                last = (
                    moving.last_raised_at
                    if kept is None
                    else max(moving.last_raised_at, kept.last_raised_at)
                )
                state[target] = replace(
                    moving, contact_id=survivor, first_raised_at=first, last_raised_at=last
                )
                history.append(
                    repository.HistoryRow(
                        survivor,
                        key[1],
                        "added" if kept is None else "set",
                        moving.current,
                        moving.source,
                        cause,
                        now,
                    )
                )
            else:
                state[target] = replace(
                    kept,
                    first_raised_at=min(moving.first_raised_at, kept.first_raised_at),
                    last_raised_at=max(moving.last_raised_at, kept.last_raised_at),
                )
        # Exclusive groups: the survivor keeps its strongest tag of each.
        strongest: dict[int, _Key] = {}
        for key in sorted(k for k in state if k[0] == survivor):
            candidate = state[key]
            if not candidate.exclusive:
                continue
            best = strongest.get(candidate.group_id)
            if best is None or candidate.current > state[best].current:
                if best is not None:
                    drop(best, "exclusive", cause)
                strongest[candidate.group_id] = key
            else:
                drop(key, "exclusive", cause)

    inserts: list[repository.ContactTagRow] = []
    updates: list[repository.ContactTagRow] = []
    deletes: list[_Key] = []
    published: list[repository.TagEventRow] = []
    for key in sorted(set(original) | set(state)):
        before, after = original.get(key), state.get(key)
        if before == after:
            continue
        changes.add(tenant_id, key[0], tag_fact(key[1]))
        if after is None:
            assert before is not None
            deletes.append(key)
            published.append(
                repository.TagEventRow(
                    "removed", key[0], key[1], before.group_id, None, None, None, reasons[key]
                )
            )
            continue
        row = repository.ContactTagRow(
            key[0],
            key[1],
            after.weight,
            after.weighted_at,
            after.half_life_days,
            after.source,
            after.first_raised_at,
            after.last_raised_at,
            after.drops_at,
        )
        if before is None:
            inserts.append(row)
            published.append(
                repository.TagEventRow(
                    "added", key[0], key[1], after.group_id, after.current, None, after.source, None
                )
            )
        else:
            updates.append(row)
            if after.current != before.current or after.source != before.source:
                published.append(
                    repository.TagEventRow(
                        "weight_changed",
                        key[0],
                        key[1],
                        after.group_id,
                        after.current,
                        before.current,
                        after.source,
                        None,
                    )
                )
    # Deletes first: a survivor's new rows never collide with rows it no longer holds.
    await repository.delete_contact_tags(session, tenant_id, deletes)
    if not await repository.insert_contact_tags(session, tenant_id, inserts):
        # A writer added the same survivor tag meanwhile: keep the higher weight (rare;
        # the rows are locked from here on).
        await repository.upsert_contact_tags(session, tenant_id, inserts, now)
    await repository.update_contact_tags(session, tenant_id, updates)
    await repository.insert_history(session, tenant_id, history)
    await repository.publish_tag_events(session, tenant_id, published, now)
