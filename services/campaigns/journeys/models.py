"""Tables of the campaigns service's journeys part: campaigns and their versions.

A campaign is a journey with a status (draft, live, paused, stopped) and a current
`version`. Every version's definition is kept (`campaign_versions`): contacts
enrolled on a version finish that version while a newer one takes new contacts.
`trigger_type` is the current version's trigger, so the triggers of live journeys
are found by index.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, Integer, String
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from shared.db import Base, TenantScoped, utcnow_column

CAMPAIGN_STATUSES = ("draft", "live", "paused", "stopped")


class Campaign(TenantScoped, Base):
    __tablename__ = "campaigns"
    __table_args__ = (
        Index("uq_campaigns_name", "tenant_id", "name", unique=True),
        Index(
            "ix_campaigns_live_trigger",
            "tenant_id",
            "trigger_type",
            postgresql_where="status = 'live'",
        ),
        CheckConstraint(
            f"status IN ({', '.join(repr(s) for s in CAMPAIGN_STATUSES)})", name="status_known"
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16), server_default="draft")
    version: Mapped[int] = mapped_column(Integer, server_default="1")
    trigger_type: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = utcnow_column()
    updated_at: Mapped[datetime] = utcnow_column()
    launched_at: Mapped[datetime | None]
    # When it last went live (launched or resumed): its triggers and listeners take the
    # events that happened since (shared.events `interest`), none from before.
    live_since: Mapped[datetime | None]
    # A schedule trigger's latest firing (its cron's time): each firing enrols once.
    fired_at: Mapped[datetime | None]
    paused_at: Mapped[datetime | None]
    stopped_at: Mapped[datetime | None]


class CampaignVersion(Base):
    __tablename__ = "campaign_versions"

    campaign_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True
    )
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[uuid.UUID]
    # The checked definition (journeys/definition.py): trigger, steps, reentry, goals.
    definition: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = utcnow_column()
