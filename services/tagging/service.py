"""Business rules of the tagging service. Functions take a session and plain values."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from services.tagging import SERVICE
from services.tagging.schemas import TaggingStatus
from shared.runtime import Runtime
from shared.service_status import service_status


async def status(session: AsyncSession, runtime: Runtime, tenant_id: uuid.UUID) -> TaggingStatus:
    found = await service_status(session, runtime, SERVICE, tenant_id)
    return TaggingStatus.model_validate(found.model_dump())
