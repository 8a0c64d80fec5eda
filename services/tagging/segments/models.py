"""Tables of the tagging service's segments part: segments and their members."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from shared.db import Base, TenantScoped, utcnow_column


class Segment(TenantScoped, Base):
    __tablename__ = "segments"
    __table_args__ = (UniqueConstraint("tenant_id", "name", name="uq_segments_name"),)

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
    created_at: Mapped[datetime] = utcnow_column()
    updated_at: Mapped[datetime] = utcnow_column()


class SegmentMember(Base):
    __tablename__ = "segment_members"
    __table_args__ = (Index("ix_segment_members_contact", "tenant_id", "contact_id"),)

    segment_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("segments.id", ondelete="CASCADE"), primary_key=True
    )
    contact_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    tenant_id: Mapped[uuid.UUID]
    entered_at: Mapped[datetime] = utcnow_column()
