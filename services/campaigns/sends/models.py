"""Tables of the campaigns service's sends part.

`campaign_sends`: every message a journey step or a notice sends, or decided not to,
one row per unique `key` (`<enrolment>:<step>:<seq>` for a step, `notice:<id>:<channel>`
for a points notice), written before any provider is called. The dispatcher claims
`planned` rows that are due (`due_at`), calls the channel's provider and stores its
answer on the row; receipts update it later (`delivered`). A send the governor held
back is `deferred` (quiet hours: due at the window's end) or `skipped`, with its
`reason`.

`contact_inbox`: the in-app channel's messages, a per-contact inbox.
`campaign_settings`: each tenant's governor settings (quotas, caps, quiet hours,
the sensitive-word filter).
`campaign_reviews`: sends the sensitive-word filter queued for ops to approve or reject.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, Integer, String, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from shared.db import Base, utcnow_column

SEND_STATUSES = ("planned", "deferred", "sending", "sent", "delivered", "skipped", "failed")


class CampaignSend(Base):
    __tablename__ = "campaign_sends"
    __table_args__ = (
        Index("uq_campaign_sends_key", "tenant_id", "key", unique=True),
        Index("ix_campaign_sends_campaign", "campaign_id", "id"),
        Index("ix_campaign_sends_contact", "tenant_id", "contact_id", "id"),
        Index(
            "ix_campaign_sends_due",
            "due_at",
            postgresql_where="status IN ('planned', 'sending')",
        ),
        Index("ix_campaign_sends_provider_ref", "channel", "provider_ref"),
        CheckConstraint(
            f"status IN ({', '.join(repr(s) for s in SEND_STATUSES)})", name="status_known"
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    tenant_id: Mapped[uuid.UUID]
    key: Mapped[str] = mapped_column(String(200))
    campaign_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("campaigns.id", ondelete="CASCADE")
    )
    version: Mapped[int | None] = mapped_column(Integer)
    enrolment_id: Mapped[int | None] = mapped_column(BigInteger)
    step_id: Mapped[str | None] = mapped_column(String(64))
    # None only while a welcome message sent ahead of the users service's backlog waits
    # for the contact its callback creates (sends/welcome_lane.py).
    contact_id: Mapped[uuid.UUID | None]
    channel: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(64))
    # What is sent, rendered for the contact: {"text": ...} (and the webhook's body).
    content: Mapped[dict[str, Any]] = mapped_column(JSONB)
    # Quota bookkeeping: the staff member it goes out from, where that counts.
    sender: Mapped[str | None] = mapped_column(String(64))
    due_at: Mapped[datetime]
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    # The provider's id of the message (an SMS id, a WeCom msgid): receipts find it.
    provider_ref: Mapped[str | None] = mapped_column(String(200))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = utcnow_column()
    updated_at: Mapped[datetime] = utcnow_column()
    sent_at: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]


class ContactInboxMessage(Base):
    __tablename__ = "contact_inbox"
    __table_args__ = (Index("ix_contact_inbox_contact", "tenant_id", "contact_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    tenant_id: Mapped[uuid.UUID]
    contact_id: Mapped[uuid.UUID]
    send_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("campaign_sends.id", ondelete="CASCADE"), unique=True
    )
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = utcnow_column()
    read_at: Mapped[datetime | None]


class CampaignSettingsRow(Base):
    __tablename__ = "campaign_settings"

    tenant_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    settings: Mapped[dict[str, Any]] = mapped_column(JSONB)
    updated_at: Mapped[datetime] = utcnow_column()


class CampaignReview(Base):
    __tablename__ = "campaign_reviews"
    __table_args__ = (
        Index("ix_campaign_reviews_open", "tenant_id", "id", postgresql_where="status = 'open'"),
        CheckConstraint("status IN ('open', 'approved', 'rejected')", name="status_known"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    tenant_id: Mapped[uuid.UUID]
    send_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("campaign_sends.id", ondelete="CASCADE"), unique=True
    )
    words: Mapped[list[str]] = mapped_column(JSONB)
    status: Mapped[str] = mapped_column(String(16), server_default="open")
    decided_by: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = utcnow_column()
    decided_at: Mapped[datetime | None]


WECOM_JOB_STATUSES = ("calling", "created", "done", "cancelled", "failed")


class WeComJob(Base):
    """One WeCom mass-message task (add_msg_template, chat_type single or group) or
    Moments task (add_moment_task): one staff member, one text, up to 10,000
    recipients, written (with its sends marked `sending`) before the call.

    `calling`: the call is under way or its answer was lost (the lease `due_at` runs
    out, then WeCom is asked what it already created before any second call).
    `created`: WeCom made it (`msgid`); followed up until every recipient's result
    is in, reminded (at most 3 a day) and cancelled at `deadline_at`.
    """

    __tablename__ = "campaign_wecom_jobs"
    __table_args__ = (
        Index(
            "ix_campaign_wecom_jobs_due",
            "due_at",
            postgresql_where="status IN ('calling', 'created')",
        ),
        Index("ix_campaign_wecom_jobs_msgid", "tenant_id", "msgid"),
        CheckConstraint(
            f"status IN ({', '.join(repr(s) for s in WECOM_JOB_STATUSES)})", name="status_known"
        ),
        CheckConstraint("kind IN ('single', 'group', 'moment')", name="kind_known"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    tenant_id: Mapped[uuid.UUID]
    kind: Mapped[str] = mapped_column(String(16))
    campaign_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("campaigns.id", ondelete="CASCADE")
    )
    sender: Mapped[str] = mapped_column(String(64))
    text: Mapped[str] = mapped_column(Text)
    # external_userids (single, moment) or chat ids (group), as sent.
    recipients: Mapped[list[str]] = mapped_column(JSONB)
    status: Mapped[str] = mapped_column(String(16), server_default="calling")
    msgid: Mapped[str | None] = mapped_column(String(200))
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    call_started_at: Mapped[datetime | None]
    due_at: Mapped[datetime]
    deadline_at: Mapped[datetime]
    reminded_at: Mapped[list[str]] = mapped_column(JSONB, server_default="[]")
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = utcnow_column()
    updated_at: Mapped[datetime] = utcnow_column()
