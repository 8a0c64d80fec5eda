"""The audit log: who changed what, in which tenant, when.

Entries are added to the request's own session, so an entry exists exactly
when the change it describes was committed.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.models import AuditEntry
from shared.observability import current_request_id

if TYPE_CHECKING:
    from starlette.requests import Request


def record_audit(
    session: AsyncSession,
    request: Request | None,
    *,
    tenant_id: uuid.UUID | None,
    api_key_id: uuid.UUID | None,
    actor: str,
    role: str | None,
    action: str,
    target: dict[str, Any] | None = None,
) -> AuditEntry:
    entry = AuditEntry(
        tenant_id=tenant_id,
        api_key_id=api_key_id,
        actor=actor,
        role=role,
        action=action,
        target=dict(target or {}),
        request_id=current_request_id(),
    )
    session.add(entry)
    if request is not None:
        request.state.audit_entry = entry
    return entry


def audit_note(request: Request, **fields: Any) -> None:
    """Add facts known only after the change (e.g. the id of what was created)."""
    entry: AuditEntry | None = getattr(request.state, "audit_entry", None)
    if entry is not None:
        # A new dict, so SQLAlchemy sees the JSONB value change.
        entry.target = {**entry.target, **{k: str(v) for k, v in fields.items()}}


async def list_audit_entries(
    session: AsyncSession,
    tenant_id: uuid.UUID | None,
    *,
    before_id: int | None = None,
    limit: int = 50,
) -> list[AuditEntry]:
    """Newest first; `tenant_id=None` means the platform's own entries."""
    query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
    if tenant_id is None:
        query = query.where(AuditEntry.tenant_id.is_(None))
    else:
        query = query.where(AuditEntry.tenant_id == tenant_id)
    if before_id is not None:
        query = query.where(AuditEntry.id < before_id)
    return list(await session.scalars(query))
