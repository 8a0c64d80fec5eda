"""Timed conditions leave (and enter) on time, without a periodic full rebuild.

The sweep runs every minute in the tagging worker. For each ready dynamic
segment with timed conditions it looks only at what time changed since the
segment's `swept_at`:

- an event window (`within_days` N): when a tenant-local day boundary has
  passed, the contacts with counts of that event type on the days that just
  left the window (the (tenant, event_type, day) index of tagging_event_days);
- a created_at window: the contacts created on the days that just left it;
- a tag weight threshold (`min_weight`): the contacts whose decaying weight of
  that tag fell below it since the last sweep (computed from weight,
  weighted_at and half-life: tag_weight() at both moments).

Only those contacts are re-evaluated against that segment, the difference is
applied and published, and segments nesting it follow (live.reevaluate). The
segment's `swept_at` then moves to now.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from services.tagging.facts import Changes
from services.tagging.segments import compiler, live, repository, rules


async def candidates(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    node: rules.Node,
    since: compiler.Moment,
    now: compiler.Moment,
) -> set[uuid.UUID]:
    """Contacts whose timed conditions may have changed between the two moments."""
    found: set[uuid.UUID] = set()
    for leaf in rules.leaves(node):
        if isinstance(leaf, rules.EventLeaf) and leaf.within_days is not None:
            first = since.window_start(leaf.within_days)
            before = now.window_start(leaf.within_days)
            if before > first:
                found |= await repository.contacts_with_days(
                    session, tenant_id, leaf.event_type, first, before
                )
        elif isinstance(leaf, rules.FieldLeaf) and leaf.within_days is not None:
            start = since.day_start(since.window_start(leaf.within_days))
            end = now.day_start(now.window_start(leaf.within_days))
            if end > start:
                found |= await repository.contacts_created_between(session, tenant_id, start, end)
        elif isinstance(leaf, rules.TagLeaf) and leaf.min_weight is not None:
            found |= await repository.contacts_crossing_weight(
                session, tenant_id, leaf.tag_id, leaf.min_weight, since.now, now.now
            )
    return found


async def sweep(session: AsyncSession, now: datetime) -> int:
    """Re-evaluate what time changed in every timed segment; how many members changed."""
    changes = Changes()
    changed = 0
    for segment, timezone in await repository.timed_segments(session):
        since_at = segment.swept_at or segment.last_built_at or now
        if since_at >= now:
            continue
        since = compiler.moment_at(since_at, timezone)
        moment = compiler.moment_at(now, timezone)
        node = live.parsed_rule(segment.id, segment.version, segment.rule)
        ids = sorted(await candidates(session, segment.tenant_id, node, since, moment))
        if ids:
            changed += await live.evaluate_contacts(
                session,
                segment.id,
                segment.version,
                segment.rule,
                segment.tenant_id,
                ids,
                moment,
                changes,
            )
        await repository.mark_swept(session, segment.id, now)
    if changes:
        await live.reevaluate(session, changes, now)
    return changed
