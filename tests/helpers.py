"""Small builders shared by the tests."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from shared import auth, tenancy
from shared.models import Tenant


async def make_tenant(session: AsyncSession, slug: str | None = None) -> Tenant:
    return await tenancy.create_tenant(session, slug or f"t-{uuid.uuid4().hex[:10]}")


async def make_key(session: AsyncSession, tenant: Tenant | None, role: str) -> str:
    _, plaintext = await auth.create_api_key(
        session,
        tenant_id=tenant.id if tenant else None,
        role=role,
        staff_userid="staff-1" if role == "staff" else None,
    )
    return plaintext


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
