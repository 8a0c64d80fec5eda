"""Tables of the campaigns service's enrolment part.

`campaign_enrolments`: a contact's run through a journey version, one row per
(campaign, contact, trigger occurrence) (`occurrence`: the trigger event's id, a
manual launch, a schedule's firing; `once` for a journey entered once ever). The
row says where the contact is (`step_id`) and when that step is due (`due_at`):
the scheduler claims due rows (`FOR UPDATE SKIP LOCKED` through the partial index).

An enrolment at a `wait` or `wait_for` step is `waiting` until `due_at` (the wait's
end, the timeout); one that is `active` runs its step at `due_at`. `listens` holds the
event types it awaits (the journey's goals, the current `wait_for`'s event), so the
events handler's interest finds it by contact. `seq` counts the steps it has taken:
with the step, the key of each send it makes (a step visited again in a loop sends
again, a step run again after a crash does not).

`campaign_entries`: when each contact last entered each journey, the lock and the
record the re-entry policy (once, once per N days, every time) is decided on.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, Integer, String, Text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
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
        Index(
            "ix_campaign_enrolments_due",
            "campaign_id",
            "due_at",
            postgresql_where="status IN ('active', 'waiting')",
        ),
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
    step_since: Mapped[datetime] = utcnow_column()
    seq: Mapped[int] = mapped_column(Integer, server_default="0")
    listens: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default="{}")
    # The split variant the contact was routed to (the latest, for a journey with more).
    variant: Mapped[str | None] = mapped_column(String(50))
    # What the trigger said that later steps use: the WeCom welcome code and the staff
    # member of a contact.added, the triggering event's id, type and properties.
    context: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
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
