"""Business rules of the campaigns service. Functions take a session and plain values."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from services.campaigns import SERVICE
from services.campaigns.schemas import CampaignsStatus
from shared.runtime import Runtime
from shared.service_status import service_status


async def status(session: AsyncSession, runtime: Runtime, tenant_id: uuid.UUID) -> CampaignsStatus:
    found = await service_status(session, runtime, SERVICE, tenant_id)
    return CampaignsStatus.model_validate(found.model_dump())
