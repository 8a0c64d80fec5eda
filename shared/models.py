"""Tables owned by the platform itself: tenants, API keys, audit log, and the event bus."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from shared.db import Base, utcnow_column

ROLES = ("admin", "operator", "analyst", "staff", "platform")


class Tenant(Base):
    """One brand / one WeCom corp. Everything else hangs off a tenant."""

    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    slug: Mapped[str] = mapped_column(String(63), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    timezone: Mapped[str] = mapped_column(String(64), server_default="Asia/Shanghai")
    created_at: Mapped[datetime] = utcnow_column()


class ApiKey(Base):
    """A bearer credential. Only its SHA-256 is stored; the key is shown once."""

    __tablename__ = "api_keys"
    __table_args__ = (
        CheckConstraint(
            "role IN ('admin','operator','analyst','staff','platform')", name="role_known"
        ),
        # A platform key stands above tenants; every other key belongs to one.
        CheckConstraint("(role = 'platform') = (tenant_id IS NULL)", name="tenant_matches_role"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    role: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200), server_default="")
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[bytes] = mapped_column(unique=True)
    staff_userid: Mapped[str | None] = mapped_column(String(64))
    created_by: Mapped[uuid.UUID | None] = mapped_column()
    created_at: Mapped[datetime] = utcnow_column()
    revoked_at: Mapped[datetime | None] = mapped_column()


class AuditEntry(Base):
    """Who did what, when, in which tenant: one row per mutating admin request."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_tenant_id_id", "tenant_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    tenant_id: Mapped[uuid.UUID | None] = mapped_column()
    api_key_id: Mapped[uuid.UUID | None] = mapped_column()
    actor: Mapped[str] = mapped_column(String(200))
    role: Mapped[str | None] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(200))
    target: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    request_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = utcnow_column()


class OutboxEvent(Base):
    """A domain event, written in the transaction of the change it describes.

    The relay publishes rows whose `published_at` is NULL after they commit;
    the row stays as the event's record (payload is loaded by consumers by id).
    """

    __tablename__ = "outbox_events"
    __table_args__ = (
        Index(
            "ix_outbox_events_unpublished",
            "id",
            postgresql_where=text("published_at IS NULL"),
        ),
        # For the retention purge; unpublished rows (NULL) stay out of it.
        Index(
            "ix_outbox_events_published_at",
            "published_at",
            postgresql_where=text("published_at IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    event_id: Mapped[uuid.UUID] = mapped_column(unique=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID | None] = mapped_column()
    type: Mapped[str] = mapped_column(String(100))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = utcnow_column()
    published_at: Mapped[datetime | None] = mapped_column()


class ProcessedEvent(Base):
    """The idempotency record of a consumer: (event, handler) is handled once."""

    __tablename__ = "processed_events"

    event_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    handler: Mapped[str] = mapped_column(String(200), primary_key=True)
    processed_at: Mapped[datetime] = utcnow_column()


class DeadLetter(Base):
    """Work that kept failing: an event for one handler, a scheduled job, or an inbound event."""

    __tablename__ = "dead_letters"
    __table_args__ = (
        UniqueConstraint("event_id", "handler", name="uq_dead_letters_event_handler"),
        UniqueConstraint("scheduled_job_id", name="uq_dead_letters_scheduled_job"),
        UniqueConstraint("inbound_event_id", name="uq_dead_letters_inbound_event"),
        CheckConstraint("status IN ('dead','replayed','resolved')", name="status_known"),
        Index("ix_dead_letters_tenant_id_id", "tenant_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    tenant_id: Mapped[uuid.UUID | None] = mapped_column()
    service: Mapped[str] = mapped_column(String(32))
    handler: Mapped[str] = mapped_column(String(200))
    event_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("outbox_events.id", ondelete="CASCADE")
    )
    scheduled_job_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("scheduled_jobs.id", ondelete="CASCADE")
    )
    # An integration's event the users worker could not apply (services/users/consumer.py).
    inbound_event_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("inbound_events.id", ondelete="CASCADE")
    )
    attempts: Mapped[int] = mapped_column(Integer)
    last_error: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), server_default="dead")
    created_at: Mapped[datetime] = utcnow_column()
    updated_at: Mapped[datetime] = utcnow_column()
    replayed_at: Mapped[datetime | None] = mapped_column()


class ScheduledJob(Base):
    """Work due at a later time (SOP steps days away). Lives here, not in Redis,
    until the scheduler moves it to its service's queue shortly before `due_at`."""

    __tablename__ = "scheduled_jobs"
    __table_args__ = (
        CheckConstraint(
            "status IN ('pending','enqueued','done','dead','cancelled')", name="status_known"
        ),
        UniqueConstraint("dedupe_key", name="uq_scheduled_jobs_dedupe_key"),
        Index(
            "ix_scheduled_jobs_due",
            "due_at",
            postgresql_where=text("status IN ('pending','enqueued')"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    tenant_id: Mapped[uuid.UUID | None] = mapped_column()
    service: Mapped[str] = mapped_column(String(32))
    job: Mapped[str] = mapped_column(String(200))
    args: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    dedupe_key: Mapped[str | None] = mapped_column(String(200))
    due_at: Mapped[datetime] = mapped_column()
    status: Mapped[str] = mapped_column(String(16), server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)
    enqueued_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = utcnow_column()


class IdempotencyRecord(Base):
    """The first answer to a request sent with an `Idempotency-Key`, replayed on retries."""

    __tablename__ = "idempotency_keys"

    scope: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    request_hash: Mapped[bytes] = mapped_column()
    status_code: Mapped[int | None] = mapped_column(Integer)
    response: Mapped[Any | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = utcnow_column()
