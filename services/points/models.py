"""Tables owned by the points service, declared on shared.db.Base so the single
Alembic history sees them. Every tenant-owned table mixes in `TenantScoped`.

The ledger is the truth: `points_ledger` rows are only ever inserted (a trigger
refuses UPDATE and DELETE). `points_accounts.balance` and `points_lots.remaining`
are what the ledger adds up to, kept in the same transaction as each entry so
that a guarded UPDATE can refuse to go below zero; `scrm points verify`
checks that they agree.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Date,
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

from shared.db import Base, TenantScoped, utcnow_column

ENTRY_KINDS = ("earn", "spend", "expire", "clawback", "adjustment", "reversal")


class PointsAccount(TenantScoped, Base):
    """One member's points: the balance, any debt left by a clawback, and lifetime sums."""

    __tablename__ = "points_accounts"
    __table_args__ = (
        UniqueConstraint("tenant_id", "contact_id", name="uq_points_accounts_contact"),
        CheckConstraint("balance >= 0", name="balance_not_negative"),
        CheckConstraint("debt >= 0", name="debt_not_negative"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    contact_id: Mapped[uuid.UUID]
    balance: Mapped[int] = mapped_column(BigInteger, server_default="0")
    # Points a clawback could not take (the balance was short); earnings settle it first.
    debt: Mapped[int] = mapped_column(BigInteger, server_default="0")
    lifetime_earned: Mapped[int] = mapped_column(BigInteger, server_default="0")
    lifetime_spent: Mapped[int] = mapped_column(BigInteger, server_default="0")
    # The membership tier (a name from the tenant's tier list) and since when.
    tier: Mapped[str | None] = mapped_column(String(32))
    tier_since: Mapped[datetime | None]
    created_at: Mapped[datetime] = utcnow_column()
    updated_at: Mapped[datetime] = utcnow_column()


class LedgerEntry(TenantScoped, Base):
    """An append-only movement of points. `points` is signed; `debt_delta` is what
    the entry added to (+) or settled of (-) the account's debt."""

    __tablename__ = "points_ledger"
    __table_args__ = (
        CheckConstraint(
            "kind IN ('earn','spend','expire','clawback','adjustment','reversal')",
            name="kind_known",
        ),
        CheckConstraint("points <> 0 OR debt_delta <> 0", name="moves_something"),
        # Exactly-once: an event, an API request or a rule occurrence books once.
        UniqueConstraint("tenant_id", "source_key", name="uq_points_ledger_source"),
        Index("ix_points_ledger_account", "account_id", "id"),
        Index(
            "ix_points_ledger_order",
            "tenant_id",
            "order_id",
            postgresql_where="order_id IS NOT NULL",
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    # No index of its own: uq_points_ledger_source leads with it.
    tenant_id: Mapped[uuid.UUID] = mapped_column()
    account_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("points_accounts.id"))
    kind: Mapped[str] = mapped_column(String(16))
    points: Mapped[int] = mapped_column(BigInteger)
    debt_delta: Mapped[int] = mapped_column(BigInteger, server_default="0")
    balance_after: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(Text, server_default="")
    rule: Mapped[str | None] = mapped_column(String(64))
    source_key: Mapped[str | None] = mapped_column(String(200))
    order_id: Mapped[str | None] = mapped_column(String(128))
    # Earnings: when their lot expires. Other entries: null.
    expires_at: Mapped[datetime | None]
    details: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    created_by: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = utcnow_column()


class PointsLot(TenantScoped, Base):
    """What is left of one earning; spending takes the oldest lots first."""

    __tablename__ = "points_lots"
    __table_args__ = (
        CheckConstraint("remaining >= 0 AND remaining <= points", name="remaining_in_range"),
        Index(
            "ix_points_lots_open",
            "account_id",
            "earned_at",
            "id",
            postgresql_where="remaining > 0",
        ),
        Index("ix_points_lots_expiring", "expires_at", postgresql_where="remaining > 0"),
        Index("ix_points_lots_account_earned", "account_id", "earned_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    # No index of its own: lots are read by account or by expiry date, never by tenant
    # alone, and every earning writes one.
    tenant_id: Mapped[uuid.UUID] = mapped_column()
    account_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("points_accounts.id"))
    entry_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("points_ledger.id"))
    order_id: Mapped[str | None] = mapped_column(String(128))
    # The kind and rule of the entry that made it: what tier growth and retention count.
    kind: Mapped[str] = mapped_column(String(16), server_default="earn")
    rule: Mapped[str | None] = mapped_column(String(64))
    points: Mapped[int] = mapped_column(Integer)
    remaining: Mapped[int] = mapped_column(Integer)
    earned_at: Mapped[datetime]
    expires_at: Mapped[datetime]


class LotMove(TenantScoped, Base):
    """Points an entry took from (-) or gave back to (+) a lot."""

    __tablename__ = "points_lot_moves"
    __table_args__ = (Index("ix_points_lot_moves_lot", "lot_id"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    entry_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("points_ledger.id"), index=True)
    lot_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("points_lots.id"))
    points: Mapped[int] = mapped_column(Integer)


class ExpiryNotice(TenantScoped, Base):
    """'N points expire on D': one per account and expiry date, for the channels."""

    __tablename__ = "points_expiry_notices"
    __table_args__ = (UniqueConstraint("account_id", "expires_on", name="uq_points_expiry_notice"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    account_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("points_accounts.id"))
    contact_id: Mapped[uuid.UUID]
    expires_on: Mapped[date] = mapped_column(Date)
    points: Mapped[int] = mapped_column(BigInteger)
    channels: Mapped[list[str]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = utcnow_column()


class OrderRefund(TenantScoped, Base):
    """Refunds seen per order, so partial refunds claw back in proportion, in total."""

    __tablename__ = "points_order_refunds"
    __table_args__ = (
        UniqueConstraint("tenant_id", "source_key", name="uq_points_order_refunds_source"),
        Index("ix_points_order_refunds_order", "tenant_id", "order_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    order_id: Mapped[str] = mapped_column(String(128))
    source_key: Mapped[str] = mapped_column(String(200))
    refund_fen: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = utcnow_column()


class TierChange(TenantScoped, Base):
    """A member's move between tiers, with why (upgrade, retention review...)."""

    __tablename__ = "points_tier_changes"
    __table_args__ = (Index("ix_points_tier_changes_account", "account_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    account_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("points_accounts.id"))
    from_tier: Mapped[str | None] = mapped_column(String(32))
    to_tier: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    created_at: Mapped[datetime] = utcnow_column()


class TierReview(TenantScoped, Base):
    """A retention review that ran: one per tenant and review period."""

    __tablename__ = "points_tier_reviews"
    __table_args__ = (
        UniqueConstraint("tenant_id", "period_start", name="uq_points_tier_review_period"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    period_start: Mapped[date] = mapped_column(Date)
    downgraded: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = utcnow_column()


class PointsConfig(Base):
    """A tenant's points rules (defaults from SPEC §4; see services.points.rules)."""

    __tablename__ = "points_config"

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSONB)
    updated_at: Mapped[datetime] = utcnow_column()


# -- catalog: what points buy ---------------------------------------------------------


class CatalogItem(TenantScoped, Base):
    """Something members spend points on: a coupon, a lottery draw, or points + cash."""

    __tablename__ = "points_items"
    __table_args__ = (
        UniqueConstraint("tenant_id", "sku", name="uq_points_items_sku"),
        CheckConstraint("kind IN ('coupon','lottery','points_cash')", name="kind_known"),
        CheckConstraint("points_cost > 0", name="costs_points"),
        CheckConstraint("stock IS NULL OR stock >= 0", name="stock_not_negative"),
        CheckConstraint("cash_fen >= 0", name="cash_not_negative"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    sku: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200))
    points_cost: Mapped[int] = mapped_column(Integer)
    # points_cash: the cash part of the price; coupon: the value off (fen).
    cash_fen: Mapped[int] = mapped_column(BigInteger, server_default="0")
    coupon_value_fen: Mapped[int | None] = mapped_column(BigInteger)
    # NULL: unlimited.
    stock: Mapped[int | None] = mapped_column(Integer)
    per_member_limit: Mapped[int | None] = mapped_column(Integer)
    # points_cash: how long points stay held waiting for the order to be paid.
    hold_minutes: Mapped[int] = mapped_column(Integer, server_default="30")
    active: Mapped[bool] = mapped_column(server_default=text("true"))
    created_at: Mapped[datetime] = utcnow_column()


class LotteryPrize(TenantScoped, Base):
    """One line of a lottery item's prize table: its weight (odds) and stock."""

    __tablename__ = "points_lottery_prizes"
    __table_args__ = (
        CheckConstraint("weight > 0", name="weight_positive"),
        CheckConstraint("stock IS NULL OR stock >= 0", name="stock_not_negative"),
        Index("ix_points_lottery_prizes_item", "item_id", "position"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    item_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("points_items.id"))
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(200))
    weight: Mapped[int] = mapped_column(Integer)
    stock: Mapped[int | None] = mapped_column(Integer)
    # A "no prize" line (thanks for playing) never runs out.
    is_blank: Mapped[bool] = mapped_column(server_default=text("false"))


class Redemption(TenantScoped, Base):
    """A member's redemption of a catalog item (and for points + cash, its hold)."""

    __tablename__ = "points_redemptions"
    __table_args__ = (
        CheckConstraint("status IN ('completed','held','spent','released')", name="status_known"),
        Index("ix_points_redemptions_member", "item_id", "account_id"),
        Index("ix_points_redemptions_held", "expires_at", postgresql_where="status = 'held'"),
        UniqueConstraint("tenant_id", "order_id", name="uq_points_redemptions_order"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    item_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("points_items.id"))
    account_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("points_accounts.id"))
    contact_id: Mapped[uuid.UUID]
    status: Mapped[str] = mapped_column(String(16))
    points: Mapped[int] = mapped_column(Integer)
    cash_fen: Mapped[int] = mapped_column(BigInteger, server_default="0")
    # The spend entry, and for a released hold the reversal entry.
    entry_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("points_ledger.id"))
    reversal_entry_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("points_ledger.id")
    )
    # points_cash: the shop order that must be paid before expires_at.
    order_id: Mapped[str | None] = mapped_column(String(128))
    expires_at: Mapped[datetime | None]
    # lottery: the seed the outcome is drawn from, and the outcome.
    seed: Mapped[str | None] = mapped_column(String(64))
    prize_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("points_lottery_prizes.id"))
    outcome: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    created_at: Mapped[datetime] = utcnow_column()
    updated_at: Mapped[datetime] = utcnow_column()


# -- benefits -------------------------------------------------------------------------


class Benefit(TenantScoped, Base):
    """A tier benefit with quotas: per member per period, and/or tenant-wide per period."""

    __tablename__ = "points_benefits"
    __table_args__ = (
        UniqueConstraint("tenant_id", "code", name="uq_points_benefits_code"),
        CheckConstraint(
            "member_period IN ('week','month','quarter','year')", name="member_period_known"
        ),
        CheckConstraint(
            "total_period IN ('week','month','quarter','year')", name="total_period_known"
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    code: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    # Tier names that may claim it; empty: every member.
    tiers: Mapped[list[str]] = mapped_column(JSONB, server_default=text("'[]'::jsonb"))
    member_quota: Mapped[int | None] = mapped_column(Integer)
    member_period: Mapped[str] = mapped_column(String(8), server_default="month")
    total_quota: Mapped[int | None] = mapped_column(Integer)
    total_period: Mapped[str] = mapped_column(String(8), server_default="week")
    active: Mapped[bool] = mapped_column(server_default=text("true"))
    created_at: Mapped[datetime] = utcnow_column()


class BenefitUsage(TenantScoped, Base):
    """Claims of a benefit in one tenant-wide period: the guarded counter of the quota."""

    __tablename__ = "points_benefit_usage"
    __table_args__ = (
        UniqueConstraint("benefit_id", "period_start", name="uq_points_benefit_usage_period"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    benefit_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("points_benefits.id"))
    period_start: Mapped[date] = mapped_column(Date)
    used: Mapped[int] = mapped_column(Integer, server_default="0")


class BenefitClaim(TenantScoped, Base):
    """One claim of a benefit by a member."""

    __tablename__ = "points_benefit_claims"
    __table_args__ = (
        Index("ix_points_benefit_claims_member", "benefit_id", "account_id", "member_period_start"),
        Index("ix_points_benefit_claims_month", "tenant_id", "claimed_on"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    benefit_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("points_benefits.id"))
    account_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("points_accounts.id"))
    contact_id: Mapped[uuid.UUID]
    tier: Mapped[str | None] = mapped_column(String(32))
    member_period_start: Mapped[date] = mapped_column(Date)
    claimed_on: Mapped[date] = mapped_column(Date)
    created_by: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = utcnow_column()


# -- health ---------------------------------------------------------------------------


class HealthAlert(TenantScoped, Base):
    """An inflation alert: a week when spending fell below the threshold share of earning."""

    __tablename__ = "points_health_alerts"
    __table_args__ = (
        UniqueConstraint("tenant_id", "kind", "week_start", name="uq_points_health_alert_week"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    week_start: Mapped[date] = mapped_column(Date)
    earned: Mapped[int] = mapped_column(BigInteger)
    spent: Mapped[int] = mapped_column(BigInteger)
    details: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    delivered_at: Mapped[datetime | None]
    delivery_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = utcnow_column()


# The referrals part keeps its tables in its own models.py; imported here so the single
# Alembic history (which loads each service's models) sees them.
from services.points.referrals import models as referrals_models  # noqa: E402, F401
from services.points.referrals import report_models  # noqa: E402, F401
