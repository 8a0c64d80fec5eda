"""Tenants: one per brand / WeCom corp. Every tenant-owned row carries `tenant_id`."""

from __future__ import annotations

import re
import uuid
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from shared.errors import Conflict, InvalidInput, NotFound
from shared.events import publish
from shared.models import Tenant

SLUG_PATTERN = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


def check_slug(slug: str) -> str:
    if not SLUG_PATTERN.fullmatch(slug):
        raise InvalidInput(
            f"invalid tenant slug {slug!r}: use 1-63 lowercase letters, digits and inner hyphens",
            details={"field": "slug"},
        )
    return slug


def check_timezone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(
            f"unknown timezone {name!r}; use an IANA name such as Asia/Shanghai",
            details={"field": "timezone"},
        ) from None
    if name not in available_timezones() and name != "UTC":
        raise InvalidInput(f"unknown timezone {name!r}", details={"field": "timezone"})
    return name


async def create_tenant(
    session: AsyncSession, slug: str, *, name: str | None = None, timezone: str = "Asia/Shanghai"
) -> Tenant:
    """Create a tenant; a second tenant with the same slug is a conflict."""
    check_slug(slug)
    check_timezone(timezone)
    tenant_id = uuid.uuid4()
    created = await session.scalar(
        insert(Tenant)
        .values(id=tenant_id, slug=slug, name=name or slug, timezone=timezone)
        .on_conflict_do_nothing(index_elements=[Tenant.slug])
        .returning(Tenant.id)
    )
    if created is None:
        raise Conflict(f"tenant {slug!r} already exists", details={"slug": slug})
    await publish(
        session,
        "tenant.created",
        {"tenant_id": str(tenant_id), "slug": slug, "timezone": timezone},
        tenant_id=tenant_id,
    )
    tenant = await session.get(Tenant, tenant_id)
    assert tenant is not None
    return tenant


async def get_tenant_by_slug(session: AsyncSession, slug: str) -> Tenant:
    tenant = await session.scalar(select(Tenant).where(Tenant.slug == slug))
    if tenant is None:
        raise NotFound(f"no tenant {slug!r}")
    return tenant


async def list_tenants(session: AsyncSession) -> list[Tenant]:
    return list(await session.scalars(select(Tenant).order_by(Tenant.created_at)))


async def tenant_timezone(session: AsyncSession, tenant_id: uuid.UUID) -> str:
    """The tenant's IANA time zone (Asia/Shanghai for a tenant not found)."""
    found = await session.scalar(select(Tenant.timezone).where(Tenant.id == tenant_id))
    return found or "Asia/Shanghai"
