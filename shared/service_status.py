"""What an operator wants to know about one service's share of the bus."""

from __future__ import annotations

import uuid

from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.events import registry
from shared.models import DeadLetter, ScheduledJob
from shared.runtime import Runtime


class ServiceStatus(BaseModel):
    service: str
    consumes: list[str]
    queue_depth: int
    scheduled_pending: int
    dead_letters: int


async def service_status(
    session: AsyncSession, runtime: Runtime, service: str, tenant_id: uuid.UUID
) -> ServiceStatus:
    """Event types the service consumes, its queue depth, and the tenant's backlog in it."""
    consumes = sorted(
        {t for sub in registry.all() if sub.service == service for t in sub.event_types}
    )
    scheduled = await session.scalar(
        select(func.count())
        .select_from(ScheduledJob)
        .where(
            ScheduledJob.service == service,
            ScheduledJob.tenant_id == tenant_id,
            ScheduledJob.status.in_(("pending", "enqueued")),
        )
    )
    dead = await session.scalar(
        select(func.count())
        .select_from(DeadLetter)
        .where(
            DeadLetter.service == service,
            DeadLetter.tenant_id == tenant_id,
            DeadLetter.status == "dead",
        )
    )
    depth = await runtime.redis.zcard(runtime.queue_name(service))
    return ServiceStatus(
        service=service,
        consumes=consumes,
        queue_depth=int(depth),
        scheduled_pending=int(scheduled or 0),
        dead_letters=int(dead or 0),
    )
