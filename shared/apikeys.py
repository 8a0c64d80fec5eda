"""API keys, roles and the principal behind a key.

A key is `scrm_<43 url-safe chars>`; only its SHA-256 is stored, so a database
dump reveals no usable key. The web side (`require(...)`, which endpoints use to
name the roles they admit) is shared.auth; this module imports no web framework,
so the commands that create and revoke keys do not load one.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from shared.audit import record_audit
from shared.errors import Forbidden, InvalidInput, NotFound, Unauthorized
from shared.models import ApiKey, Tenant

if TYPE_CHECKING:
    from starlette.requests import Request

Role = Literal["admin", "operator", "analyst", "staff", "platform"]
TENANT_ROLES: tuple[Role, ...] = ("admin", "operator", "analyst", "staff")
ALL_TENANT_ROLES = TENANT_ROLES
KEY_PREFIX = "scrm_"
# Roles that may see personal data unmasked. Analysts never do; staff only for
# their own contacts, which the owning service decides.
_UNMASKED_ROLES = {"admin", "operator"}


@dataclass(frozen=True)
class Principal:
    """The caller, as established from its API key."""

    api_key_id: uuid.UUID
    role: Role
    tenant_id: uuid.UUID | None
    tenant_slug: str | None
    staff_userid: str | None = None

    @property
    def tenant(self) -> uuid.UUID:
        """The caller's tenant; platform keys have none and are refused here."""
        if self.tenant_id is None:
            raise Forbidden("this endpoint needs a tenant API key")
        return self.tenant_id

    @property
    def may_read_personal_data(self) -> bool:
        return self.role in _UNMASKED_ROLES

    @property
    def actor(self) -> str:
        return f"api_key:{self.api_key_id}"


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def check_role(value: str) -> Role:
    if value not in (*TENANT_ROLES, "platform"):
        raise InvalidInput(
            f"unknown role {value!r}; one of admin, operator, analyst, staff, platform",
            details={"field": "role"},
        )
    return value


async def create_api_key(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID | None,
    role: str,
    name: str = "",
    staff_userid: str | None = None,
    created_by: uuid.UUID | None = None,
) -> tuple[ApiKey, str]:
    """Create a key and return it with its plaintext, which is never stored."""
    checked = check_role(role)
    if (checked == "platform") != (tenant_id is None):
        raise InvalidInput(
            "a platform key has no tenant; every other role needs one",
            details={"field": "tenant"},
        )
    if checked == "staff" and not staff_userid:
        raise InvalidInput(
            "a staff key must name the staff member's WeCom userid",
            details={"field": "staff_userid"},
        )
    plaintext = generate_key()
    key = ApiKey(
        tenant_id=tenant_id,
        role=checked,
        name=name,
        prefix=plaintext[: len(KEY_PREFIX) + 6],
        key_hash=hash_key(plaintext),
        staff_userid=staff_userid if checked == "staff" else None,
        created_by=created_by,
    )
    session.add(key)
    await session.flush()
    return key, plaintext


async def list_api_keys(session: AsyncSession, tenant_id: uuid.UUID) -> list[ApiKey]:
    rows = await session.scalars(
        select(ApiKey).where(ApiKey.tenant_id == tenant_id).order_by(ApiKey.created_at)
    )
    return list(rows)


async def get_api_key(session: AsyncSession, tenant_id: uuid.UUID, key_id: uuid.UUID) -> ApiKey:
    key = await session.scalar(
        select(ApiKey).where(ApiKey.id == key_id, ApiKey.tenant_id == tenant_id)
    )
    if key is None:
        raise NotFound("no such API key")
    return key


async def revoke_api_key(session: AsyncSession, tenant_id: uuid.UUID, key_id: uuid.UUID) -> ApiKey:
    key = await get_api_key(session, tenant_id, key_id)
    if key.revoked_at is None:
        await session.execute(
            update(ApiKey)
            .where(ApiKey.id == key.id, ApiKey.revoked_at.is_(None))
            .values(revoked_at=datetime.now(UTC))
        )
        await session.refresh(key)
    return key


async def authenticate(session: AsyncSession, authorization: str | None) -> Principal:
    """The principal behind an `Authorization: Bearer <key>` header."""
    if not authorization:
        raise Unauthorized("missing Authorization header; send 'Bearer <API key>'")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("Authorization must be 'Bearer <API key>'")
    if not token.startswith(KEY_PREFIX) or len(token) > 100:
        raise Unauthorized("invalid API key")
    row = (
        await session.execute(
            select(ApiKey, Tenant.slug)
            .outerjoin(Tenant, Tenant.id == ApiKey.tenant_id)
            .where(ApiKey.key_hash == hash_key(token))
        )
    ).first()
    if row is None:
        raise Unauthorized("invalid API key")
    key, slug = row
    if key.revoked_at is not None:
        raise Unauthorized("this API key has been revoked")
    return Principal(
        api_key_id=key.id,
        role=check_role(key.role),
        tenant_id=key.tenant_id,
        tenant_slug=slug,
        staff_userid=key.staff_userid,
    )


def audit_as(
    session: AsyncSession,
    request: Request | None,
    principal: Principal,
    *,
    action: str,
    target: dict[str, Any],
) -> None:
    """Write an audit entry on behalf of `principal` in the request's transaction."""
    record_audit(
        session,
        request,
        tenant_id=principal.tenant_id,
        api_key_id=principal.api_key_id,
        actor=principal.actor,
        role=principal.role,
        action=action,
        target=target,
    )
