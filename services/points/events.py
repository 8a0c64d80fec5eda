"""The points service's event types: what it publishes (tiers, expiry, the course of
referrals and their rewards), including the referral event it earns invite points on.

It publishes nothing per ledger movement: the ledger is the record of those.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Literal

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


class ReferralAttributed(BaseModel):
    """An invitee was attributed to an inviter (a channel code, `referral.registered` or
    the API): the referral is pending until the invitee's first paid order."""

    model_config = ConfigDict(extra="forbid")

    referral_id: int
    inviter_contact_id: uuid.UUID
    invitee_contact_id: uuid.UUID
    level2_inviter_contact_id: uuid.UUID | None = Field(description="The inviter's inviter.")
    source: Literal["wecom", "event", "api"]
    occurred_at: AwareDatetime


class ReferralQualified(BaseModel):
    """The invitee's first paid order qualified the referral: the hold runs until
    `hold_until` (7 days by default), then the inviter is rewarded."""

    model_config = ConfigDict(extra="forbid")

    referral_id: int
    inviter_contact_id: uuid.UUID
    invitee_contact_id: uuid.UUID
    order_id: str
    amount_fen: int
    occurred_at: AwareDatetime
    hold_until: AwareDatetime


class ReferralSucceeded(BaseModel):
    """A referral's hold ended without a revocation: the inviter earns the invite points
    (200 by default, once per referral: `referral_id` keys the earning)."""

    model_config = ConfigDict(extra="allow")

    inviter_contact_id: uuid.UUID
    referral_id: int | None = Field(
        default=None, description="Published by the referrals part; the earning's key."
    )
    invitee_contact_id: uuid.UUID | None = None
    occurred_at: AwareDatetime | None = None


class ReferralRevoked(BaseModel):
    """A referral was revoked: within the hold the invitee deleted the staff member
    (`deleted_staff`) or refunded the qualifying order in full (`refunded`); or ops
    found it fraudulent (`fraud`); or a merge made it a second attribution of one
    person (`merged`, `self_invite`). What it paid was clawed back."""

    model_config = ConfigDict(extra="forbid")

    referral_id: int
    inviter_contact_id: uuid.UUID
    invitee_contact_id: uuid.UUID
    from_status: Literal["pending", "qualified", "rewarded"]
    reason: str
    occurred_at: AwareDatetime
    clawed_back: list[dict[str, Any]] = Field(
        description="Each reward taken back: reward_id, contact_id, purpose, kind, was, "
        "points (its value in points, taken through the ledger)."
    )


class ReferralRewardGranted(BaseModel):
    """A referral reward was granted: a tier reward or the invitee's welcome reward. A
    coupon or item is for the shop to issue; points are in the ledger already."""

    model_config = ConfigDict(extra="forbid")

    reward_id: int
    referral_id: int | None
    contact_id: uuid.UUID
    purpose: Literal["tier", "welcome", "invite"]
    tier_count: int | None
    kind: Literal["points", "coupon", "item"]
    name: str
    points: int
    value_fen: int
    sku: str | None


_CONTACT = "5d0c6c57-9b9a-4a7e-8d35-3f0b5f4f2b11"
_INVITEE = "0b7e2f1a-43c9-4d8e-a2b6-9c1d5e7f3a20"


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
        name="referral.attributed",
        direction="domain",
        service="points",
        description=_describe(ReferralAttributed),
        model=ReferralAttributed,
        example={
            "referral_id": 812,
            "inviter_contact_id": _CONTACT,
            "invitee_contact_id": _INVITEE,
            "level2_inviter_contact_id": None,
            "source": "wecom",
            "occurred_at": "2026-11-20T10:31:00+08:00",
        },
    ),
    EventType(
        name="referral.qualified",
        direction="domain",
        service="points",
        description=_describe(ReferralQualified),
        model=ReferralQualified,
        example={
            "referral_id": 812,
            "inviter_contact_id": _CONTACT,
            "invitee_contact_id": _INVITEE,
            "order_id": "SO-20261121-0042",
            "amount_fen": 12900,
            "occurred_at": "2026-11-21T09:12:00+08:00",
            "hold_until": "2026-11-28T09:12:00+08:00",
        },
    ),
    EventType(
        name="referral.succeeded",
        direction="domain",
        service="points",
        description=_describe(ReferralSucceeded),
        model=ReferralSucceeded,
        example={
            "referral_id": 812,
            "inviter_contact_id": _CONTACT,
            "invitee_contact_id": _INVITEE,
            "occurred_at": "2026-11-28T09:13:00+08:00",
        },
    ),
    EventType(
        name="referral.revoked",
        direction="domain",
        service="points",
        description=_describe(ReferralRevoked),
        model=ReferralRevoked,
        example={
            "referral_id": 812,
            "inviter_contact_id": _CONTACT,
            "invitee_contact_id": _INVITEE,
            "from_status": "qualified",
            "reason": "deleted_staff",
            "occurred_at": "2026-11-23T20:05:00+08:00",
            "clawed_back": [
                {
                    "reward_id": 3301,
                    "contact_id": _INVITEE,
                    "purpose": "welcome",
                    "kind": "coupon",
                    "was": "granted",
                    "points": 250,
                }
            ],
        },
    ),
    EventType(
        name="referral.reward_granted",
        direction="domain",
        service="points",
        description=_describe(ReferralRewardGranted),
        model=ReferralRewardGranted,
        example={
            "reward_id": 3301,
            "referral_id": 812,
            "contact_id": _INVITEE,
            "purpose": "welcome",
            "tier_count": None,
            "kind": "coupon",
            "name": "¥5 no-threshold coupon",
            "points": 0,
            "value_fen": 500,
            "sku": None,
        },
    ),
]
