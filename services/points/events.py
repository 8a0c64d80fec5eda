"""The points service's event types: what it publishes (tiers, expiry) and the
referral event it earns invite points on.

It publishes nothing per ledger movement: the ledger is the record of those.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from shared.catalog import EventType


class TierChanged(BaseModel):
    """The member's tier changed: joined, an immediate upgrade, or a drop at the
    quarterly retention review."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    contact_id: uuid.UUID
    from_tier: str | None = Field(alias="from", description="None when the member joins.")
    to_tier: str = Field(alias="to")
    reason: Literal["joined", "upgrade", "retention_review"]
    growth: int | None = Field(
        default=None, description="joined, upgrade: the growth value that reached the tier."
    )
    threshold: int | None = Field(default=None, description="joined, upgrade: the tier's.")
    period_start: dt.date | None = Field(
        default=None, description="retention_review: the review period's first day."
    )
    orders_this_quarter: int | None = Field(default=None, description="retention_review.")
    points_this_year: int | None = Field(default=None, description="retention_review.")
    required: dict[str, int] | None = Field(
        default=None,
        description="retention_review: what would have kept the tier "
        "(orders_per_quarter, points_per_year).",
    )


class PointsExpiring(BaseModel):
    """Points of the member expire soon (30 days ahead by default): one notice per
    account and expiry date, for the channels to tell the member."""

    model_config = ConfigDict(extra="forbid")

    contact_id: uuid.UUID
    expires_on: dt.date = Field(description="Tenant-local date.")
    points: int = Field(ge=1)
    channels: list[str] = Field(description="e.g. in_app, sms, wecom_template.")
    notice_id: int


class ReferralSucceeded(BaseModel):
    """An invitee converted: the inviter earns the invite points (200 by default).
    Consumed by points; the referrals part that will publish it is not built yet."""

    model_config = ConfigDict(extra="allow")

    inviter_contact_id: uuid.UUID
    occurred_at: AwareDatetime | None = None


_CONTACT = "5d0c6c57-9b9a-4a7e-8d35-3f0b5f4f2b11"


def _describe(model: type[BaseModel]) -> str:
    return " ".join((model.__doc__ or "").split())


EVENTS: list[EventType] = [
    EventType(
        name="tier.changed",
        direction="domain",
        service="points",
        description=_describe(TierChanged),
        model=TierChanged,
        example={
            "contact_id": _CONTACT,
            "from": "silver",
            "to": "gold",
            "reason": "upgrade",
            "growth": 5200,
            "threshold": 5000,
        },
    ),
    EventType(
        name="points.expiring",
        direction="domain",
        service="points",
        description=_describe(PointsExpiring),
        model=PointsExpiring,
        example={
            "contact_id": _CONTACT,
            "expires_on": "2026-12-31",
            "points": 320,
            "channels": ["in_app", "sms", "wecom_template"],
            "notice_id": 1042,
        },
    ),
    EventType(
        name="referral.succeeded",
        direction="domain",
        service="points",
        description=_describe(ReferralSucceeded),
        model=ReferralSucceeded,
        example={"inviter_contact_id": _CONTACT, "occurred_at": "2026-11-20T10:31:00+08:00"},
    ),
]
