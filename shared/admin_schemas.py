"""HTTP contract of the platform endpoints (/v1/me, /v1/admin/...)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from shared.dlq import Subject
    from shared.models import DeadLetter

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


class DeadLetterAbout(BaseModel):
    """The work a dead letter is about (shared.dlq.Subject)."""

    model_config = ConfigDict(from_attributes=True)

    kind: Literal["inbound_event", "event", "scheduled_job"] = Field(
        description="An integration's event the users workers could not apply, a domain "
        "event a handler could not handle, or a scheduled job."
    )
    id: int = Field(description="Its row: inbound_event_id, event_id or scheduled_job_id.")
    type: str | None = Field(description="The event type, or the job's name.")
    source: str | None = Field(
        description="Inbound events: wecom (a callback) or event (a webhook or POST /v1/events)."
    )
    event_id: str | None = Field(
        description="Inbound events: the event_id the integration sent (for WeCom callbacks, "
        "their dedupe key); domain events: the event's id."
    )


class DeadLetterOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    tenant_id: uuid.UUID | None
    service: str
    handler: str
    event_id: int | None = Field(description="The outbox event (domain events only).")
    scheduled_job_id: int | None
    inbound_event_id: int | None = Field(description="The stored inbound event (users only).")
    about: DeadLetterAbout | None = Field(default=None, description="What died.")
    what: str = Field(
        default="",
        description="The same in one line, e.g. `inbound event order.paid E1 from event`.",
    )
    attempts: int = Field(
        description="Attempts of the round that ended here, at most "
        "SCRM_EVENT_MAX_ATTEMPTS (a replay starts a new round)."
    )
    last_error: str
    status: str
    created_at: datetime
    updated_at: datetime
    replayed_at: datetime | None

    @classmethod
    def of(cls, letter: DeadLetter, about: Subject | None) -> DeadLetterOut:
        """A dead letter (shared.models.DeadLetter) with what it is about (shared.dlq.Subject)."""
        out = cls.model_validate(letter)
        if about is not None:
            out.about = DeadLetterAbout.model_validate(about)
            out.what = about.describe()
        return out


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None
