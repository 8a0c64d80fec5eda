"""Small builders shared by the tests."""

from __future__ import annotations

import asyncio
import subprocess
import sys
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


async def run_scrm(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run the real `scrm` command line in a subprocess."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "shared.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
