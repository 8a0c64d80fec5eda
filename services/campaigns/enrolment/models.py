"""Tables of the campaigns service's enrolment part.

`campaign_enrolments`: a contact's run through a journey version, one row per
(campaign, contact, trigger occurrence) (`occurrence`: the trigger event's id, a
manual launch, a schedule's firing; `once` for a journey entered once ever). The
row says where the contact is (`step_id`) and when that step is due (`due_at`):
the scheduler claims due rows (`FOR UPDATE SKIP LOCKED` through the partial index).

`campaign_entries`: when each contact last entered each journey, the lock and the
record the re-entry policy (once, once per N days, every time) is decided on.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from shared.db import Base, utcnow_column

ENROLMENT_STATUSES = ("active", "waiting", "done", "exited", "converted")


class CampaignEnrolment(Base):
    __tablename__ = "campaign_enrolments"
    __table_args__ = (
        Index(
            "uq_campaign_enrolments_occurrence",
            "campaign_id",
            "contact_id",
            "occurrence",
            unique=True,
        ),
        Index("ix_campaign_enrolments_due", "due_at", postgresql_where="status = 'active'"),
        Index("ix_campaign_enrolments_contact", "tenant_id", "contact_id"),
        CheckConstraint(
            f"status IN ({', '.join(repr(s) for s in ENROLMENT_STATUSES)})",
            name="status_known",
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    tenant_id: Mapped[uuid.UUID]
    campaign_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("campaigns.id", ondelete="CASCADE")
    )
    version: Mapped[int] = mapped_column(Integer)
    contact_id: Mapped[uuid.UUID]
    occurrence: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), server_default="active")
    step_id: Mapped[str] = mapped_column(String(64))
    due_at: Mapped[datetime]
    entered_at: Mapped[datetime] = utcnow_column()
    ended_at: Mapped[datetime | None]
    end_reason: Mapped[str | None] = mapped_column(Text)


class CampaignEntry(Base):
    __tablename__ = "campaign_entries"

    campaign_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True
    )
    contact_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    tenant_id: Mapped[uuid.UUID]
    last_entered_at: Mapped[datetime]
