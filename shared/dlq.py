"""Dead letters: work that kept failing, listed and replayed by ops."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from sqlalchemy import TextClause, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from shared.errors import Conflict, NotFound
from shared.models import DeadLetter
from shared.relay import DELIVER_JOB
from shared.runtime import Runtime

ALL_TENANTS = "all"

# How a dead inbound event (an integration's event the users workers could not
# apply) becomes due again: the users service owns those rows and says how.
InboundReplay = Callable[[AsyncSession, int], Awaitable[None]]
_replay_inbound: InboundReplay | None = None


def replays_inbound_events(replay: InboundReplay) -> InboundReplay:
    global _replay_inbound
    _replay_inbound = replay
    return replay


SubjectKind = Literal["inbound_event", "event", "scheduled_job"]


@dataclass(frozen=True)
class Subject:
    """What a dead letter is about: the work that died, named as ops know it."""

    kind: SubjectKind
    id: int  # of its row: inbound_events, outbox_events or scheduled_jobs
    type: str | None  # the event type, or the job's name
    # Inbound events: where they came from (wecom, or event: a webhook or POST /v1/events).
    source: str | None = None
    # Inbound events: the integration's event_id (a WeCom callback's dedupe key);
    # outbox events: the domain event's id.
    event_id: str | None = None

    def describe(self) -> str:
        """One line, e.g. `inbound event order.paid SO-1-paid from event`."""
        if self.kind == "inbound_event":
            return f"inbound event {self.type} {self.event_id} from {self.source}"
        if self.kind == "event":
            return f"event {self.type} {self.event_id}"
        return f"scheduled job {self.type} {self.id}"


# Each reads the clear columns that name the work (never a payload, which may name people).
_SUBJECTS: dict[SubjectKind, TextClause] = {
    "inbound_event": text(
        "SELECT id, type, source, dedupe_key FROM inbound_events WHERE id = ANY(:ids)"
    ),
    "event": text("SELECT id, type, NULL, event_id::text FROM outbox_events WHERE id = ANY(:ids)"),
    "scheduled_job": text("SELECT id, job, NULL, NULL FROM scheduled_jobs WHERE id = ANY(:ids)"),
}


def _subject_key(letter: DeadLetter) -> tuple[SubjectKind, int] | None:
    if letter.inbound_event_id is not None:
        return "inbound_event", letter.inbound_event_id
    if letter.event_id is not None:
        return "event", letter.event_id
    if letter.scheduled_job_id is not None:
        return "scheduled_job", letter.scheduled_job_id
    return None


async def subjects(session: AsyncSession, letters: Sequence[DeadLetter]) -> dict[int, Subject]:
    """What each dead letter is about, by dead letter id (one query per kind of work)."""
    keys = {letter.id: key for letter in letters if (key := _subject_key(letter)) is not None}
    found: dict[tuple[SubjectKind, int], Subject] = {}
    for kind, statement in _SUBJECTS.items():
        ids = sorted({row_id for k, row_id in keys.values() if k == kind})
        if not ids:
            continue
        for row_id, type_, source, event_id in await session.execute(statement, {"ids": ids}):
            found[(kind, row_id)] = Subject(kind, row_id, type_, source, event_id)
    return {letter_id: found[key] for letter_id, key in keys.items() if key in found}


async def list_dead_letters(
    session: AsyncSession,
    tenant_id: uuid.UUID | str | None,
    *,
    status: str | None = "dead",
    before_id: int | None = None,
    limit: int = 50,
) -> list[DeadLetter]:
    """Newest first. `tenant_id=ALL_TENANTS` lists every tenant's (platform view)."""
    query = select(DeadLetter).order_by(DeadLetter.id.desc()).limit(limit)
    if tenant_id != ALL_TENANTS:
        query = query.where(DeadLetter.tenant_id.is_not_distinct_from(tenant_id))
    if status is not None:
        query = query.where(DeadLetter.status == status)
    if before_id is not None:
        query = query.where(DeadLetter.id < before_id)
    return list(await session.scalars(query))


async def get_dead_letter(
    session: AsyncSession, tenant_id: uuid.UUID | str | None, dead_letter_id: int
) -> DeadLetter:
    query = select(DeadLetter).where(DeadLetter.id == dead_letter_id)
    if tenant_id != ALL_TENANTS:
        query = query.where(DeadLetter.tenant_id.is_not_distinct_from(tenant_id))
    found = await session.scalar(query.with_for_update())
    if found is None:
        raise NotFound(f"no dead letter {dead_letter_id}")
    return found


async def replay_dead_letter(
    session: AsyncSession, runtime: Runtime, tenant_id: uuid.UUID | str | None, dead_letter_id: int
) -> DeadLetter:
    """Give the failed work a fresh round of attempts.

    The job is enqueued before this transaction commits: if the commit then
    failed, the replay still runs once, and running it is idempotent anyway.
    """
    letter = await get_dead_letter(session, tenant_id, dead_letter_id)
    if letter.status != "dead":
        raise Conflict(
            f"dead letter {dead_letter_id} is {letter.status}, not dead",
            details={"status": letter.status},
        )
    if letter.event_id is not None:
        await runtime.redis.enqueue_job(
            DELIVER_JOB,
            [letter.event_id],
            handler=letter.handler,
            attempt=1,
            _queue_name=runtime.queue_name(letter.service),
        )
    elif letter.inbound_event_id is not None:
        if _replay_inbound is None:
            raise Conflict(
                f"dead letter {dead_letter_id} is an inbound event and the users service "
                "is not loaded here to replay it"
            )
        await _replay_inbound(session, letter.inbound_event_id)
    elif letter.scheduled_job_id is not None:
        await session.execute(
            text(
                "UPDATE scheduled_jobs SET status = 'pending', attempts = 0, due_at = now(), "
                "finished_at = NULL WHERE id = :id"
            ),
            {"id": letter.scheduled_job_id},
        )
    now = datetime.now(UTC)
    letter.status = "replayed"
    letter.replayed_at = now
    letter.updated_at = now
    await session.flush()
    return letter
