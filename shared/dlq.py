"""Dead letters: work that kept failing, listed and replayed by ops."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from sqlalchemy import select, text
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
