"""Tables of the referral report: its read model of contacts, and its alerts.

The report needs facts the users service owns (when a contact joined, when it
first paid, whether an invitee came back the day after joining). They arrive as
events (reports_tasks.py) and are kept here, never read from the users tables:

- `referral_contacts`: every contact's `joined_at` (`contact.profile_changed`'s
  `created_at`) and `first_paid_at` (its earliest `order.paid`), for the shares of
  new contacts and the paid conversion of invited and organic ones;
- `referral_activity`: an invitee active (an interaction or an order) on the
  tenant-local day after their attribution: only that day is recorded, so the
  table holds at most about one row per invitee;
- `referral_alerts`: a day's cohort of invitees whose D1 retention fell below the
  tenant's `d1_retention_alert_below`, recorded once per tenant and cohort day and
  posted to the tenant's alert webhook.

Contact ids follow merges (the survivor's from then on).
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

from sqlalchemy import BigInteger, Date, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from services.points.referrals.models import Referral, ReferralReward
from shared.db import Base, utcnow_column


def invitee_condition(alias: str = "") -> str:
    """SQL: the referral counts a new person for the report. It was attributed, and not
    revoked as the same person as another invitee (merged) or as no one new
    (self_invite)."""
    of = f"{alias}." if alias else ""
    return (
        f"{of}status <> 'refused' AND NOT ({of}status = 'revoked' "
        f"AND COALESCE({of}reason, '') IN ('merged', 'self_invite'))"
    )


class ReferralContact(Base):
    """When a contact joined the tenant and first paid (None: not known yet)."""

    __tablename__ = "referral_contacts"
    __table_args__ = (
        Index(
            "ix_referral_contacts_joined",
            "tenant_id",
            "joined_at",
            postgresql_include=["contact_id", "first_paid_at"],
        ),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    contact_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    joined_at: Mapped[datetime | None]
    first_paid_at: Mapped[datetime | None]


class ReferralActivity(Base):
    """An invitee was active on `day` (tenant-local), the day after their attribution."""

    __tablename__ = "referral_activity"

    tenant_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    contact_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)


class ReferralAlert(Base):
    """A cohort day whose invitees' D1 retention fell below the tenant's threshold."""

    __tablename__ = "referral_alerts"
    __table_args__ = (
        UniqueConstraint("tenant_id", "kind", "cohort_day", name="uq_referral_alerts_cohort"),
        Index(
            "ix_referral_alerts_undelivered",
            "tenant_id",
            postgresql_where="delivered_at IS NULL",
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    tenant_id: Mapped[uuid.UUID]
    kind: Mapped[str] = mapped_column(String(32))  # d1_retention
    cohort_day: Mapped[date] = mapped_column(Date)
    invitees: Mapped[int] = mapped_column(Integer)
    retained: Mapped[int] = mapped_column(Integer)
    details: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    delivered_at: Mapped[datetime | None]
    delivery_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = utcnow_column()


# The report's indexes on the referrals part's tables, declared beside the report that
# reads them. Each covers what the report reads, so it is read from the index alone:
# referrals by attribution time, the invitees (reports.INVITEE) by contact, rewards by
# grant time.
Index(
    "ix_referrals_attributed",
    Referral.tenant_id,
    Referral.attributed_at,
    postgresql_include=[
        "status",
        "reason",
        "inviter_id",
        "invitee_id",
        "level2_inviter_id",
        "qualified_at",
    ],
)
Index(
    "ix_referrals_invitees",
    Referral.tenant_id,
    Referral.invitee_id,
    postgresql_include=["level2_inviter_id"],
    postgresql_where=invitee_condition(),
)
Index(
    "ix_referral_rewards_granted",
    ReferralReward.tenant_id,
    ReferralReward.granted_at,
    postgresql_include=["kind", "status", "points", "value_fen", "sku"],
    postgresql_where="granted_at IS NOT NULL",
)
