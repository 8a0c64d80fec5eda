"""Tables of the referrals part.

`referral_codes`: each contact's invite code, made on first request and stable
afterwards. A code is unguessable (50 random bits in a 32-letter alphabet without
look-alike letters) and unique across tenants, but only ever looked up within its
tenant: another tenant's code is unknown.

`referrals`: each attribution of an invitee to an inviter, and its course (pending,
qualified, rewarded, revoked), or an attribution refused with its reason.
`referral_transitions`: every change of a referral's status, with its cause.
`referral_rewards`: what a referral paid (the inviter's invite points and tier
rewards, the invitee's welcome reward), each once (`reward_key`), and its clawback.
`referral_reviews`: inviters put under manual review, and the ops decision.
`referral_settings`: a tenant's referral configuration (config.py).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, String, Text, text
from sqlalchemy.dialects.postgresql import JSONB
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
        # The hold expiry job's work: qualified referrals by the end of their hold.
        Index("ix_referrals_hold", "hold_until", postgresql_where="status = 'qualified'"),
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
    # The invitee's first paid order (qualified), what it paid and what was refunded of
    # it since; the hold ends at hold_until (qualified_at + the tenant's hold days).
    order_id: Mapped[str | None] = mapped_column(String(128))
    order_amount_fen: Mapped[int | None] = mapped_column(BigInteger)
    refunded_fen: Mapped[int] = mapped_column(BigInteger, server_default="0")
    hold_until: Mapped[datetime | None]
    created_at: Mapped[datetime] = utcnow_column()


class ReferralTransition(Base):
    """A change of a referral's status and what caused it (the event, job or person)."""

    __tablename__ = "referral_transitions"
    __table_args__ = (Index("ix_referral_transitions_referral", "referral_id"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    tenant_id: Mapped[uuid.UUID]
    referral_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("referrals.id"))
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    # e.g. attributed, order_paid, hold_ended, deleted_staff, refunded, fraud, merged
    cause: Mapped[str] = mapped_column(String(64))
    details: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    actor: Mapped[str] = mapped_column(String(200))
    at: Mapped[datetime]


REWARD_KINDS = ("points", "coupon", "item")


class ReferralReward(Base):
    """One reward of the referral programme, paid once (`reward_key`).

    - `invite`: the inviter's invite points for a succeeded referral;
    - `tier`: the inviter's reward for reaching a count of succeeded referrals;
    - `welcome`: the invitee's reward on attribution.

    A points reward is a ledger earning (`entry_id`); a coupon or an item is granted
    here (an item takes a unit of its catalog stock) and published
    (`referral.reward_granted`) for the shop to issue. A reward whose referral is
    revoked is clawed back through the ledger: its points, or a coupon's or an item's
    value in points (`clawback_points`); what the balance cannot cover is a debt.
    An item out of stock (or not in the catalog) stays `owed` and is granted when it
    can be.
    """

    __tablename__ = "referral_rewards"
    __table_args__ = (
        Index("uq_referral_rewards_key", "tenant_id", "reward_key", unique=True),
        Index("ix_referral_rewards_referral", "referral_id"),
        Index("ix_referral_rewards_owed", "tenant_id", postgresql_where="status = 'owed'"),
        CheckConstraint("status IN ('granted', 'owed', 'clawed_back')", name="status_known"),
        CheckConstraint(f"kind IN ({', '.join(repr(k) for k in REWARD_KINDS)})", name="kind"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    tenant_id: Mapped[uuid.UUID]
    reward_key: Mapped[str] = mapped_column(String(120))
    purpose: Mapped[str] = mapped_column(String(16))  # invite, tier, welcome
    referral_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("referrals.id"))
    contact_id: Mapped[uuid.UUID]  # who received it
    tier_count: Mapped[int | None]
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200))
    points: Mapped[int] = mapped_column(BigInteger, server_default="0")
    value_fen: Mapped[int] = mapped_column(BigInteger, server_default="0")
    sku: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    entry_id: Mapped[int | None] = mapped_column(BigInteger)
    clawback_entry_id: Mapped[int | None] = mapped_column(BigInteger)
    clawback_points: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime]
    granted_at: Mapped[datetime | None]
    clawed_back_at: Mapped[datetime | None]


class ReferralReview(Base):
    """An inviter under manual review: their rewards wait until ops decide."""

    __tablename__ = "referral_reviews"
    __table_args__ = (
        Index(
            "uq_referral_reviews_open",
            "tenant_id",
            "inviter_id",
            unique=True,
            postgresql_where="status = 'open'",
        ),
        Index("ix_referral_reviews_tenant", "tenant_id", "status", "id"),
        CheckConstraint("status IN ('open', 'approved', 'rejected')", name="status_known"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    tenant_id: Mapped[uuid.UUID]
    inviter_id: Mapped[uuid.UUID]
    status: Mapped[str] = mapped_column(String(16))
    trigger: Mapped[str] = mapped_column(String(32))  # velocity
    details: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    opened_at: Mapped[datetime]
    decided_at: Mapped[datetime | None]
    decided_by: Mapped[str | None] = mapped_column(String(200))
    decision_reason: Mapped[str | None] = mapped_column(String(500))


class ReferralSettings(Base):
    """A tenant's referral configuration (services.points.referrals.config)."""

    __tablename__ = "referral_settings"

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSONB)
    updated_at: Mapped[datetime] = utcnow_column()
