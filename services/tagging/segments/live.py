"""Live segment membership: changed contacts re-evaluated against the segments that
read a changed fact; entries and exits published.

For each tenant in the batch's `Changes`: contacts that are no longer live
(merged, erased) leave every segment; then the tenant's dynamic segments whose
`reads` overlap the changed facts (one indexed lookup) are each evaluated for
only the contacts whose facts they read, with one statement per segment
(repository.apply_difference). Every entry and exit is recorded as a
("segment", id) fact, which the next round takes, so segments nesting a changed
one follow it (rules cannot nest in a cycle, so the rounds end).
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from services.tagging.facts import Changes, Fact, segment_fact
from services.tagging.segments import compiler, repository, rules

log = logging.getLogger("scrm.tagging.segments")

# Rules nest without cycles, so the rounds end; this bounds them in any case.
MAX_ROUNDS = 64
# Parsed rules by (segment, version): a rule is parsed once per worker, not per batch.
_parsed: dict[tuple[int, int], rules.Node] = {}


def _fact_key(fact: Fact) -> str:
    return f"{fact[0]}:{fact[1]}"


def parsed_rule(segment_id: int, version: int, rule: object) -> rules.Node:
    key = (segment_id, version)
    node = _parsed.get(key)
    if node is None:
        if len(_parsed) > 10_000:
            _parsed.clear()
        node = _parsed[key] = rules.parse(rule)
    return node


async def reevaluate(session: AsyncSession, changes: Changes, now: datetime) -> None:
    """Re-evaluate the changed contacts; publish segment.entered / segment.left."""
    if not changes:
        return
    async with repository.planned_as_lookups(session):
        for rounds, (tenant_id, contacts) in enumerate(changes.take(), start=1):
            if rounds > MAX_ROUNDS:
                log.error("segments: re-evaluation did not settle after %d rounds", MAX_ROUNDS)
                return
            await _reevaluate_tenant(session, tenant_id, contacts, now, changes)


async def _reevaluate_tenant(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    contacts: dict[uuid.UUID, set[Fact]],
    now: datetime,
    changes: Changes,
) -> None:
    for segment_id, contact_id in await repository.remove_departed(
        session, tenant_id, list(contacts), now
    ):
        changes.add(tenant_id, contact_id, segment_fact(segment_id))
    wanted: dict[str, list[uuid.UUID]] = {}
    for contact_id, facts in contacts.items():
        for fact in facts:
            wanted.setdefault(_fact_key(fact), []).append(contact_id)
    if not wanted:
        return
    segments = await repository.segments_reading(session, tenant_id, sorted(wanted))
    if not segments:
        return
    moment = compiler.moment_at(now, await repository.tenant_timezone(session, tenant_id))
    for segment in segments:
        ids: set[uuid.UUID] = set()
        for read in segment.reads:
            ids.update(wanted.get(read, ()))
        await evaluate_contacts(
            session,
            segment.id,
            segment.version,
            segment.rule,
            tenant_id,
            sorted(ids),
            moment,
            changes,
        )


async def evaluate_contacts(
    session: AsyncSession,
    segment_id: int,
    version: int,
    rule: object,
    tenant_id: uuid.UUID,
    ids: list[uuid.UUID],
    moment: compiler.Moment,
    changes: Changes,
) -> int:
    """Evaluate `ids` against one segment, applying and recording the difference."""
    node = parsed_rule(segment_id, version, rule)
    changed = 0
    for start in range(0, len(ids), CHUNK):
        result = await repository.apply_difference(
            session, tenant_id, segment_id, node, moment, ids[start : start + CHUNK]
        )
        assert isinstance(result, list)
        for _, contact_id in result:
            changes.add(tenant_id, contact_id, segment_fact(segment_id))
        changed += len(result)
    return changed


# Contacts per statement (a batch of events has at most 500; a sweep can have more).
CHUNK = 5000
