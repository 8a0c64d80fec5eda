"""Business rules of the users service. Functions take a session and plain values."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from services.users import SERVICE
from services.users.schemas import UsersStatus
from shared.runtime import Runtime
from shared.service_status import service_status


async def status(session: AsyncSession, runtime: Runtime, tenant_id: uuid.UUID) -> UsersStatus:
    found = await service_status(session, runtime, SERVICE, tenant_id)
    return UsersStatus.model_validate(found.model_dump())
