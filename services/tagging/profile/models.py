"""The tagging service's read model of each contact, fed only by events.

Segments, tag rules and lifecycle stages are evaluated over these tables, never
over another service's: the users service's `contacts` stay its own.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

from sqlalchemy import BigInteger, Date, Float, Index, Integer, SmallInteger, String, text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from shared.db import Base

LIFECYCLE_STAGES = ("potential", "new", "active", "silent", "churned")


class TaggingProfile(Base):
    """One contact as the tagging service knows it."""

    __tablename__ = "tagging_profiles"
    __table_args__ = (
        # Contacts whose stage changes with the passage of time, by when it is due.
        Index(
            "ix_tagging_profiles_stage_due",
            "stage_due_at",
            postgresql_where=text("stage_due_at IS NOT NULL"),
        ),
        Index("ix_tagging_profiles_created", "tenant_id", "created_at"),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    contact_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    # live, merged (into merged_into) or erased.
    status: Mapped[str] = mapped_column(String(16), server_default="live")
    merged_into: Mapped[uuid.UUID | None]
    # When the contact became known (its users-service creation time).
    created_at: Mapped[datetime] = mapped_column(server_default=text("now()"))
    owner_staff: Mapped[str | None] = mapped_column(String(64))
    channel: Mapped[str | None] = mapped_column(String(64))
    attributes: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    # {"sms": "opted_out", ...}: the last consent change per channel.
    consent: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    points_tier: Mapped[str | None] = mapped_column(String(32))
    # No staff member follows the contact any more, and why.
    lost_at: Mapped[datetime | None]
    lost_reason: Mapped[str | None] = mapped_column(String(32))
    lifecycle_stage: Mapped[str] = mapped_column(String(16), server_default="potential")
    stage_since: Mapped[datetime] = mapped_column(server_default=text("now()"))
    # When the stage next changes if nothing happens (silent, churned...).
    stage_due_at: Mapped[datetime | None]
    first_order_at: Mapped[datetime | None]
    last_order_at: Mapped[datetime | None]
    last_interaction_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(server_default=text("now()"))
    # RFM (profile.scores, migration 0014): the raw values over the tenant's window, the
    # 1-5 scores, the 8-cell grid's code, the value tier and the health score (0-100).
    recency_days: Mapped[int | None]
    frequency: Mapped[int | None]
    monetary_fen: Mapped[int | None] = mapped_column(BigInteger)
    r_score: Mapped[int | None] = mapped_column(SmallInteger)
    f_score: Mapped[int | None] = mapped_column(SmallInteger)
    m_score: Mapped[int | None] = mapped_column(SmallInteger)
    rfm_cell: Mapped[str | None] = mapped_column(String(32))
    value_tier: Mapped[str | None] = mapped_column(String(16))
    health_score: Mapped[int | None] = mapped_column(SmallInteger)
    scored_at: Mapped[datetime | None]


class TaggingEventDay(Base):
    """How many events of a type a contact had on a tenant-local day."""

    __tablename__ = "tagging_event_days"
    __table_args__ = (
        # Set-based builds ("≥2 order.paid in 30 days" over every contact) and the
        # window sweep (contacts whose counted day just left a window).
        Index(
            "ix_tagging_event_days_type_day",
            "tenant_id",
            "event_type",
            "day",
            postgresql_include=["contact_id", "n"],
        ),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    contact_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    event_type: Mapped[str] = mapped_column(String(100), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    n: Mapped[int] = mapped_column(Integer)


class TaggingEvent(Base):
    """A contact's event with its properties, for conditions on properties
    (`"where": {"category": "tea"}`), kept for the longest window in use."""

    __tablename__ = "tagging_events"
    __table_args__ = (
        Index(
            "ix_tagging_events_contact_type",
            "tenant_id",
            "contact_id",
            "event_type",
            "occurred_at",
        ),
        Index("ix_tagging_events_type_time", "tenant_id", "event_type", "occurred_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    tenant_id: Mapped[uuid.UUID]
    contact_id: Mapped[uuid.UUID]
    event_type: Mapped[str] = mapped_column(String(100))
    occurred_at: Mapped[datetime]
    day: Mapped[date] = mapped_column(Date)
    properties: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    # The outbox event it came from: one row per source event.
    source_event_id: Mapped[uuid.UUID] = mapped_column(unique=True)


class TaggingGroupMember(Base):
    """A contact's membership of a customer group (group.joined / group.left)."""

    __tablename__ = "tagging_group_members"
    __table_args__ = (Index("ix_tagging_group_members_contact", "tenant_id", "contact_id"),)

    tenant_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    chat_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    contact_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    joined_at: Mapped[datetime] = mapped_column(server_default=text("now()"))


class TaggingOrder(Base):
    """An order as RFM sees it: who paid how much when, and what was refunded since."""

    __tablename__ = "tagging_orders"
    __table_args__ = (Index("ix_tagging_orders_contact", "tenant_id", "contact_id", "paid_at"),)

    tenant_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    order_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    contact_id: Mapped[uuid.UUID]
    # None while only a refund of it is known (events can arrive out of order).
    paid_at: Mapped[datetime | None]
    amount_fen: Mapped[int] = mapped_column(BigInteger, server_default="0")
    refunded_fen: Mapped[int] = mapped_column(BigInteger, server_default="0")


class TaggingSettings(Base):
    """A tenant's lifecycle and score settings (profile.settings.ProfileSettings)."""

    __tablename__ = "tagging_settings"

    tenant_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    settings: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    updated_at: Mapped[datetime] = mapped_column(server_default=text("now()"))


class TaggingScoreBoundaries(Base):
    """A tenant's quintile boundaries (four cut points each) of recency, frequency and
    monetary over its buyers, and the engagement that scores full health, as the
    periodic job last computed them; per-event scoring only compares against them."""

    __tablename__ = "tagging_score_boundaries"

    tenant_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    recency_days: Mapped[list[float]] = mapped_column(ARRAY(Float))
    frequency: Mapped[list[float]] = mapped_column(ARRAY(Float))
    monetary_fen: Mapped[list[float]] = mapped_column(ARRAY(Float))
    engagement_max: Mapped[float] = mapped_column(Float, server_default="0")
    buyers: Mapped[int] = mapped_column(Integer, server_default="0")
    computed_at: Mapped[datetime] = mapped_column(server_default=text("now()"))
