"""Tables of the referrals part.

`referral_codes`: each contact's invite code, made on first request and stable
afterwards. A code is unguessable (50 random bits in a 32-letter alphabet without
look-alike letters) and unique across tenants, but only ever looked up within its
tenant: another tenant's code is unknown.

`referrals`: each attribution of an invitee to an inviter, and its course (pending,
qualified, rewarded, revoked), or an attribution refused with its reason.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from shared.db import Base, utcnow_column


class ReferralCode(Base):
    __tablename__ = "referral_codes"
    __table_args__ = (Index("uq_referral_codes_code", "code", unique=True),)

    tenant_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    contact_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = utcnow_column()
    # The WeCom channel code (联系我, add_contact_way) whose State names the inviter:
    # made by a job after the code, for tenants with a WeCom app.
    qr_code: Mapped[str | None] = mapped_column(Text)
    wecom_config_id: Mapped[str | None] = mapped_column(String(100))
    qr_error: Mapped[str | None] = mapped_column(String(100))


REFERRAL_STATUSES = ("pending", "qualified", "rewarded", "revoked", "refused")


class Referral(Base):
    """An invitee attributed to an inviter (or an attribution refused, with its reason).

    The first valid attribution of an invitee wins: one row per invitee and tenant
    whose status is not `refused`. `level2_inviter_id` is the inviter's own inviter,
    for chain reports.
    """

    __tablename__ = "referrals"
    __table_args__ = (
        Index(
            "uq_referrals_invitee",
            "tenant_id",
            "invitee_id",
            unique=True,
            postgresql_where="status <> 'refused'",
        ),
        Index("ix_referrals_inviter", "tenant_id", "inviter_id", "attributed_at"),
        Index("uq_referrals_event", "tenant_id", "event_key", unique=True),
        CheckConstraint(
            f"status IN ({', '.join(repr(s) for s in REFERRAL_STATUSES)})", name="status_known"
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    tenant_id: Mapped[uuid.UUID]
    invitee_id: Mapped[uuid.UUID]
    inviter_id: Mapped[uuid.UUID | None]
    level2_inviter_id: Mapped[uuid.UUID | None]
    code: Mapped[str] = mapped_column(String(16))
    # wecom (a channel code's State), event (referral.registered), api
    source: Mapped[str] = mapped_column(String(16))
    # What attributed it, once: `event:<outbox id>` (a redelivery attributes nothing).
    event_key: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(64))
    device_hash: Mapped[str | None] = mapped_column(String(64))
    ip_hash: Mapped[str | None] = mapped_column(String(64))
    attributed_at: Mapped[datetime]
    qualified_at: Mapped[datetime | None]
    rewarded_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = utcnow_column()
