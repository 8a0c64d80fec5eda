"""Tag rules fired as events are applied: once per source event.

For a batch of applied events (profile.ingest has recorded them in tagging_events
already), a few statements whatever its size:

1. the default rules of tenants seen for the first time (defaults.py);
2. the active rules of the batch's tenants and event types;
3. for rules with a window, one count of each (rule, event) pair's qualifying events
   in the window ending at the event (per property value for a derived tag);
4. the derived tags, created when missing;
5. the firings, recorded with a unique (rule, source event): only the new ones go on,
   so a second delivery, a replay or an overlapping batch fires nothing again;
6. one `apply_tag_writes` per tenant.

A rule with a window fires on every qualifying event once the count is met (the 3rd
view of tea in 7 days raises interest:tea, and so does the 4th, up to the cap); an
event older than the window as of now fires nothing (history arriving late does not
raise a weight about recent behaviour).
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from services.tagging.facts import Changes
from services.tagging.profile.ingest import AppliedEvent
from services.tagging.rules import repository
from services.tagging.rules.conditions import matches, tag_name_of
from services.tagging.rules.defaults import ensure_defaults
from services.tagging.rules.repository import Candidate, FiringRow, RuleRow
from services.tagging.rules.targets import ensure_tags
from services.tagging.tags.writes import TagWrite, apply_tag_writes

log = logging.getLogger("scrm.tagging.rules")

# Source ids of events that came without one (none should): stable per bus event.
_BUS_EVENT_NAMESPACE = uuid.UUID("0f4a4c59-63a3-4c1e-9c2b-6a0d3f1e7b21")


@dataclass
class _Match:
    rule: RuleRow
    event: AppliedEvent
    source_event_id: uuid.UUID
    position: int
    # A derived tag's name (None for a fixed tag, or when skipped).
    tag_name: str | None = None
    skip: str | None = None
    tag_id: int | None = None


def _source_id(event: AppliedEvent) -> uuid.UUID:
    if event.source_event_id is not None:
        return event.source_event_id
    return uuid.uuid5(_BUS_EVENT_NAMESPACE, str(event.event_id))


async def apply(
    session: AsyncSession, applied: list[AppliedEvent], changes: Changes, now: datetime
) -> None:
    """Fire the tenant's active rules that the applied events satisfy."""
    if not applied:
        return
    tenants = sorted({e.tenant_id for e in applied}, key=str)
    await ensure_defaults(session, tenants)
    rules = await repository.active_rules(session, tenants, sorted({e.event_type for e in applied}))
    if not rules:
        return
    by_key: dict[tuple[uuid.UUID, str], list[RuleRow]] = defaultdict(list)
    for rule in rules:
        by_key[(rule.tenant_id, rule.event_type)].append(rule)

    matched: list[_Match] = []
    counted: list[tuple[_Match, Candidate]] = []
    seen: set[tuple[int, uuid.UUID]] = set()
    for position, event in enumerate(applied):
        for rule in by_key.get((event.tenant_id, event.event_type), ()):
            source_event_id = _source_id(event)
            if (rule.id, source_event_id) in seen or not matches(event.properties, rule.where):
                continue
            seen.add((rule.id, source_event_id))
            found = _Match(rule, event, source_event_id, position)
            condition: dict[str, Any] = dict(rule.where)
            if rule.from_property is not None:
                found.tag_name, found.skip = tag_name_of(event.properties, rule.from_property)
                if found.skip is None:
                    condition[rule.from_property] = found.tag_name
            if rule.window_days is not None and found.skip is None:
                if event.occurred_at <= now - timedelta(days=rule.window_days):
                    continue
                if rule.min_count > 1:
                    counted.append(
                        (
                            found,
                            Candidate(
                                event.tenant_id,
                                event.contact_id,
                                event.event_type,
                                found.source_event_id,
                                event.occurred_at,
                                condition,
                                rule.window_days,
                                rule.min_count,
                            ),
                        )
                    )
                    continue
            matched.append(found)
    counts = await repository.counts_in_windows(session, [c for _, c in counted])
    matched += [m for (m, c), n in zip(counted, counts, strict=True) if n >= c.min_count]
    if not matched:
        return
    # The writes combine in the order of the events (then of the rules).
    matched.sort(key=lambda m: (m.position, m.rule.id))

    derived = [
        (m.event.tenant_id, m.rule.group_id, m.tag_name)
        for m in matched
        if m.skip is None and m.tag_name is not None and m.rule.group_id is not None
    ]
    tag_ids = await ensure_tags(session, derived)
    for m in matched:
        if m.skip is not None:
            continue
        if m.rule.tag_id is not None:
            m.tag_id = m.rule.tag_id
        else:
            assert m.rule.group_id is not None and m.tag_name is not None
            m.tag_id = tag_ids.get((m.event.tenant_id, m.rule.group_id, m.tag_name))
            if m.tag_id is None:  # its group went away, or the tenant has too many tags
                m.skip = "tag_not_created"

    fresh = await repository.claim_firings(
        session,
        [
            FiringRow(
                m.rule.id,
                m.source_event_id,
                m.event.tenant_id,
                m.event.contact_id,
                m.tag_id,
                "skipped" if m.skip is not None else "fired",
                m.skip,
            )
            for m in matched
        ],
        now,
    )
    writes: dict[uuid.UUID, list[TagWrite]] = defaultdict(list)
    for m in matched:
        if m.skip is not None or (m.rule.id, m.source_event_id) not in fresh:
            continue
        assert m.tag_id is not None
        writes[m.event.tenant_id].append(
            TagWrite(
                contact_id=m.event.contact_id,
                tag_id=m.tag_id,
                mode="set" if m.rule.action == "set" else "raise",
                weight=m.rule.weight,
                cap=m.rule.cap,
                source="rule",
                cause={
                    "rule_id": m.rule.id,
                    "event_type": m.event.event_type,
                    "source_event_id": str(m.source_event_id),
                },
            )
        )
    skipped = sum(
        1 for m in matched if m.skip is not None and (m.rule.id, m.source_event_id) in fresh
    )
    if skipped:
        log.info("tag rules skipped %d event(s) whose property cannot name a tag", skipped)
    for tenant_id, tenant_writes in writes.items():
        await apply_tag_writes(session, tenant_id, tenant_writes, changes, now)
