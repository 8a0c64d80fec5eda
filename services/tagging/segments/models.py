"""Tables of the tagging service's segments part: segments and their members.

A dynamic segment keeps, beside its rule, what the rule reads (`reads`: facts as
"tag:5", "event:order.paid", "field:lifecycle_stage", "group:<chat id>",
"segment:3"), computed when the rule is saved: live re-evaluation looks up the
segments reading a changed fact through its GIN index. `timed` segments have
conditions that change with the passage of time (event windows, created_at
windows, decaying tag weights); the sweep re-evaluates them from `swept_at` on.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Identity,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from shared.db import Base, TenantScoped, utcnow_column

SEGMENT_KINDS = ("dynamic", "static")
SEGMENT_STATUSES = ("building", "ready", "failed")


class Segment(TenantScoped, Base):
    __tablename__ = "segments"
    __table_args__ = (
        UniqueConstraint("tenant_id", "name", name="uq_segments_name"),
        Index("ix_segments_reads", "reads", postgresql_using="gin"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    # dynamic (a rule, kept live) or static (a list of contacts).
    kind: Mapped[str] = mapped_column(String(16), server_default="dynamic")
    rule: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    # building, ready or failed (with error); last_built_at is the last success.
    status: Mapped[str] = mapped_column(String(16), server_default="building")
    error: Mapped[str | None] = mapped_column(Text)
    build_attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    last_built_at: Mapped[datetime | None]
    version: Mapped[int] = mapped_column(Integer, server_default="1")
    # The facts the rule reads ("tag:5", ...), and whether time alone changes it.
    reads: Mapped[list[str]] = mapped_column(ARRAY(String), server_default="{}")
    timed: Mapped[bool] = mapped_column(Boolean, server_default="false")
    # The moment up to which the sweep has re-evaluated the segment's timed conditions.
    swept_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = utcnow_column()
    updated_at: Mapped[datetime] = utcnow_column()


class SegmentMember(Base):
    __tablename__ = "segment_members"
    __table_args__ = (
        Index("ix_segment_members_contact", "tenant_id", "contact_id"),
        # Member pages (cursor = the last id seen).
        Index("ix_segment_members_page", "segment_id", "id"),
    )

    segment_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("segments.id", ondelete="CASCADE"), primary_key=True
    )
    contact_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    tenant_id: Mapped[uuid.UUID]
    entered_at: Mapped[datetime] = utcnow_column()
    id: Mapped[int] = mapped_column(BigInteger, Identity())
