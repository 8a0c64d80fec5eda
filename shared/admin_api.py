"""Platform endpoints every service serves: who am I, tenants, API keys, audit, DLQ."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request
from sqlalchemy.ext.asyncio import AsyncSession

from shared import audit, auth, dlq, tenancy
from shared.admin_schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyOut,
    AuditEntryOut,
    DeadLetterOut,
    MeOut,
    Page,
    TenantCreate,
    TenantOut,
)
from shared.auth import Principal, require
from shared.deps import SessionDep
from shared.idempotency import IdempotencyDep
from shared.models import DeadLetter, Tenant
from shared.params import Cursor, DbId

router = APIRouter(prefix="/v1", tags=["platform"])

AnyRole = Annotated[Principal, require("admin", "operator", "analyst", "staff", "platform")]
TenantAdmin = Annotated[Principal, require("admin")]
PlatformAdmin = Annotated[Principal, require("platform")]
AdminOrPlatform = Annotated[Principal, require("admin", "platform")]
Limit = Annotated[int, Query(ge=1, le=500)]


@router.get("/me", response_model=MeOut)
async def me(principal: AnyRole, session: SessionDep) -> MeOut:
    tenant = await session.get(Tenant, principal.tenant_id) if principal.tenant_id else None
    return MeOut(
        api_key_id=principal.api_key_id,
        role=principal.role,
        tenant=TenantOut.model_validate(tenant) if tenant else None,
        staff_userid=principal.staff_userid,
        may_read_personal_data=principal.may_read_personal_data,
    )


@router.post("/admin/tenants", status_code=201, response_model=TenantOut)
async def create_tenant(
    body: TenantCreate,
    principal: PlatformAdmin,
    idem: IdempotencyDep,
    session: SessionDep,
    request: Request,
) -> object:
    tenant = await tenancy.create_tenant(session, body.slug, name=body.name, timezone=body.timezone)
    audit.audit_note(request, tenant_id=tenant.id, slug=tenant.slug)
    return idem.respond(TenantOut.model_validate(tenant), status_code=201)


@router.get("/admin/tenants", response_model=list[TenantOut])
async def list_tenants(principal: PlatformAdmin, session: SessionDep) -> list[TenantOut]:
    return [TenantOut.model_validate(t) for t in await tenancy.list_tenants(session)]


@router.get("/admin/tenants/{slug}", response_model=TenantOut)
async def get_tenant(slug: str, principal: PlatformAdmin, session: SessionDep) -> TenantOut:
    return TenantOut.model_validate(await tenancy.get_tenant_by_slug(session, slug))


@router.post("/admin/tenants/{slug}/api-keys", status_code=201, response_model=ApiKeyCreated)
async def create_tenant_api_key(
    slug: str,
    body: ApiKeyCreate,
    principal: PlatformAdmin,
    idem: IdempotencyDep,
    session: SessionDep,
    request: Request,
) -> object:
    tenant = await tenancy.get_tenant_by_slug(session, slug)
    return await _create_key(session, request, idem, tenant.id, body, principal)


@router.post("/admin/api-keys", status_code=201, response_model=ApiKeyCreated)
async def create_api_key(
    body: ApiKeyCreate,
    principal: TenantAdmin,
    idem: IdempotencyDep,
    session: SessionDep,
    request: Request,
) -> object:
    return await _create_key(session, request, idem, principal.tenant, body, principal)


async def _create_key(
    session: SessionDep,
    request: Request,
    idem: IdempotencyDep,
    tenant_id: uuid.UUID,
    body: ApiKeyCreate,
    principal: Principal,
) -> object:
    key, plaintext = await auth.create_api_key(
        session,
        tenant_id=tenant_id,
        role=body.role,
        name=body.name,
        staff_userid=body.staff_userid,
        created_by=principal.api_key_id,
    )
    audit.audit_note(request, api_key_id=key.id, role=key.role)
    out = ApiKeyCreated.model_validate(
        {**ApiKeyOut.model_validate(key).model_dump(), "key": plaintext}
    )
    return idem.respond(out, status_code=201)


@router.get("/admin/api-keys", response_model=list[ApiKeyOut])
async def list_api_keys(principal: TenantAdmin, session: SessionDep) -> list[ApiKeyOut]:
    keys = await auth.list_api_keys(session, principal.tenant)
    return [ApiKeyOut.model_validate(k) for k in keys]


@router.get("/admin/api-keys/{key_id}", response_model=ApiKeyOut)
async def get_api_key(key_id: uuid.UUID, principal: TenantAdmin, session: SessionDep) -> ApiKeyOut:
    return ApiKeyOut.model_validate(await auth.get_api_key(session, principal.tenant, key_id))


@router.delete("/admin/api-keys/{key_id}", response_model=ApiKeyOut)
async def revoke_api_key(
    key_id: uuid.UUID, principal: TenantAdmin, session: SessionDep
) -> ApiKeyOut:
    """Revoke a key; revoking it again answers the same (revoked) key."""
    return ApiKeyOut.model_validate(await auth.revoke_api_key(session, principal.tenant, key_id))


@router.get("/admin/audit-log", response_model=Page[AuditEntryOut])
async def read_audit_log(
    principal: AdminOrPlatform,
    session: SessionDep,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[AuditEntryOut]:
    entries = await audit.list_audit_entries(
        session, principal.tenant_id, before_id=cursor, limit=limit
    )
    next_cursor = str(entries[-1].id) if len(entries) == limit else None
    return Page[AuditEntryOut](
        items=[AuditEntryOut.model_validate(e) for e in entries], next_cursor=next_cursor
    )


def _dlq_scope(principal: Principal) -> uuid.UUID | str:
    return principal.tenant_id if principal.tenant_id is not None else dlq.ALL_TENANTS


async def _described(session: AsyncSession, letters: list[DeadLetter]) -> list[DeadLetterOut]:
    """Dead letters with what each is about (source, type and id of the work)."""
    about = await dlq.subjects(session, letters)
    return [DeadLetterOut.of(letter, about.get(letter.id)) for letter in letters]


@router.get("/admin/dlq", response_model=Page[DeadLetterOut])
async def list_dead_letters(
    principal: AdminOrPlatform,
    session: SessionDep,
    status: Annotated[str | None, Query(pattern="^(dead|replayed|resolved)$")] = "dead",
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[DeadLetterOut]:
    letters = await dlq.list_dead_letters(
        session, _dlq_scope(principal), status=status, before_id=cursor, limit=limit
    )
    next_cursor = str(letters[-1].id) if len(letters) == limit else None
    return Page[DeadLetterOut](items=await _described(session, letters), next_cursor=next_cursor)


@router.get("/admin/dlq/{dead_letter_id}", response_model=DeadLetterOut)
async def get_dead_letter(
    dead_letter_id: DbId, principal: AdminOrPlatform, session: SessionDep
) -> DeadLetterOut:
    letter = await dlq.get_dead_letter(session, _dlq_scope(principal), dead_letter_id)
    [described] = await _described(session, [letter])
    return described


@router.post("/admin/dlq/{dead_letter_id}/replay", response_model=DeadLetterOut)
async def replay_dead_letter(
    dead_letter_id: DbId, principal: AdminOrPlatform, session: SessionDep, request: Request
) -> DeadLetterOut:
    letter = await dlq.replay_dead_letter(
        session, request.app.state.runtime, _dlq_scope(principal), dead_letter_id
    )
    [described] = await _described(session, [letter])
    return described
