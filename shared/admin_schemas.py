"""HTTP contract of the platform endpoints (/v1/me, /v1/admin/...)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

TenantRole = Literal["admin", "operator", "analyst", "staff"]
T = TypeVar("T")


class TenantOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    slug: str
    name: str
    timezone: str
    created_at: datetime


class TenantCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    slug: str = Field(min_length=1, max_length=63, examples=["acme"])
    name: str | None = Field(default=None, max_length=200)
    timezone: str = Field(default="Asia/Shanghai", max_length=64)


class MeOut(BaseModel):
    api_key_id: uuid.UUID
    role: str
    tenant: TenantOut | None
    staff_userid: str | None
    may_read_personal_data: bool


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: TenantRole
    name: str = Field(default="", max_length=200)
    staff_userid: str | None = Field(default=None, min_length=1, max_length=64)


class ApiKeyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    tenant_id: uuid.UUID | None
    role: str
    name: str
    prefix: str
    staff_userid: str | None
    created_at: datetime
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="The secret key. It is shown only in this response.")


class AuditEntryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    tenant_id: uuid.UUID | None
    api_key_id: uuid.UUID | None
    actor: str
    role: str | None
    action: str
    target: dict[str, Any]
    request_id: str | None
    created_at: datetime


class DeadLetterOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    tenant_id: uuid.UUID | None
    service: str
    handler: str
    event_id: int | None
    scheduled_job_id: int | None
    attempts: int
    last_error: str
    status: str
    created_at: datetime
    updated_at: datetime
    replayed_at: datetime | None


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None
