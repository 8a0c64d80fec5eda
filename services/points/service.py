"""Business rules of the points service. Functions take a session and plain values."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from services.points import SERVICE
from services.points.schemas import PointsStatus
from shared.runtime import Runtime
from shared.service_status import service_status


async def status(session: AsyncSession, runtime: Runtime, tenant_id: uuid.UUID) -> PointsStatus:
    found = await service_status(session, runtime, SERVICE, tenant_id)
    return PointsStatus.model_validate(found.model_dump())
