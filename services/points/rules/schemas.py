"""A tenant's points rules: what earns how much, caps, promotions, expiry.

Every number of SPEC §4 is a default here and tenant configuration through
GET/PUT /v1/points/config. Amounts are integers (points, fen); multipliers
are decimals applied to the base and rounded down.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, model_validator

Points = Annotated[int, Field(ge=0, le=1_000_000)]
Multiplier = Annotated[Decimal, Field(gt=0, le=100, max_digits=6, decimal_places=3)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CheckinRule(_Strict):
    points: Points = 5


class CommentRule(_Strict):
    points: Points = 10
    daily_cap: Annotated[int, Field(ge=0, le=1000)] = 3


class OrderRule(_Strict):
    points_per_yuan: Points = 1


class InviteRule(_Strict):
    points: Points = 200


class EarningRules(_Strict):
    checkin: CheckinRule = CheckinRule()
    comment: CommentRule = CommentRule()
    order_paid: OrderRule = OrderRule()
    invite: InviteRule = InviteRule()


RULE_NAMES = ("checkin", "comment", "order_paid", "invite")


class Promotion(_Strict):
    """A time-boxed multiplier (e.g. double points) on some rules (all when empty)."""

    name: Annotated[str, Field(min_length=1, max_length=100)]
    multiplier: Multiplier
    starts_at: datetime
    ends_at: datetime
    rules: list[str] = []

    @model_validator(mode="after")
    def _check(self) -> Promotion:
        if self.starts_at.tzinfo is None or self.ends_at.tzinfo is None:
            raise ValueError("starts_at and ends_at need a timezone")
        if self.ends_at <= self.starts_at:
            raise ValueError("ends_at must be after starts_at")
        unknown = set(self.rules) - set(RULE_NAMES)
        if unknown:
            raise ValueError(f"unknown rule(s): {', '.join(sorted(unknown))}")
        return self


class Retention(_Strict):
    """What keeps a tier at a review: any one of the set minimums (none set: kept)."""

    orders_per_quarter: Annotated[int | None, Field(ge=1, le=10_000)] = None
    points_per_year: Annotated[int | None, Field(ge=1, le=100_000_000)] = None


class Tier(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[a-z0-9_-]+$")]
    # Reached when the growth measure over the growth window is at least this.
    threshold: Annotated[int, Field(ge=0, le=10_000_000_000)]
    retention: Retention = Retention()
    multiplier: Multiplier = Decimal(1)


DEFAULT_TIERS = [
    Tier(name="bronze", threshold=0),
    Tier(name="silver", threshold=1_000, retention=Retention(points_per_year=500)),
    Tier(
        name="gold",
        threshold=5_000,
        retention=Retention(orders_per_quarter=1, points_per_year=2_000),
    ),
    Tier(
        name="platinum",
        threshold=20_000,
        retention=Retention(orders_per_quarter=2, points_per_year=3_000),
        multiplier=Decimal("1.2"),
    ),
    Tier(
        name="diamond",
        threshold=50_000,
        retention=Retention(orders_per_quarter=3, points_per_year=5_000),
        multiplier=Decimal("1.5"),
    ),
]


class PointsRules(_Strict):
    earning: EarningRules = EarningRules()
    # 5 to 7 tiers, lowest first, thresholds rising; the first starts at 0.
    tiers: Annotated[list[Tier], Field(min_length=5, max_length=7)] = DEFAULT_TIERS
    # What moves members up: points earned, or spend (fen), over the trailing window.
    growth_measure: Literal["points_earned", "spend_fen"] = "points_earned"
    growth_window_days: Annotated[int, Field(ge=1, le=3650)] = 365
    # Retention reviews: every quarter or every year (tenant-local calendar).
    review_every: Literal["quarter", "year"] = "quarter"
    promotions: Annotated[list[Promotion], Field(max_length=100)] = []
    # Tier name -> multiplier on every earning of a member in that tier.
    expiry_months: Annotated[int, Field(ge=1, le=120)] = 24
    expiry_warning_days: Annotated[int, Field(ge=1, le=365)] = 30
    expiry_channels: list[str] = ["in_app", "sms", "wecom_template"]
    # The points-mall exchange rate: this many points take ¥1 off.
    points_per_yuan_off: Annotated[int, Field(ge=1, le=100_000)] = 50
    # Health: alert when a week's spending is below this share of its earning.
    inflation_alert_ratio: Annotated[Decimal, Field(gt=0, le=10, decimal_places=3)] = Decimal("0.7")
    # Where alerts are posted (JSON), if anywhere.
    alert_webhook_url: HttpUrl | None = None

    @model_validator(mode="after")
    def _check_tiers(self) -> PointsRules:
        names = [t.name for t in self.tiers]
        if len(set(names)) != len(names):
            raise ValueError("tier names must be unique")
        if self.tiers[0].threshold != 0:
            raise ValueError("the first tier starts at threshold 0")
        if any(
            a.threshold >= b.threshold for a, b in zip(self.tiers, self.tiers[1:], strict=False)
        ):
            raise ValueError("tier thresholds must rise strictly")
        return self

    def tier(self, name: str | None) -> Tier:
        for tier in self.tiers:
            if tier.name == name:
                return tier
        return self.tiers[0]

    def rank(self, name: str | None) -> int:
        return self.tiers.index(self.tier(name))

    def multiplier(self, rule: str, at: datetime, tier: str | None = None) -> Decimal:
        value = Decimal(1)
        for promo in self.promotions:
            if promo.starts_at <= at < promo.ends_at and (not promo.rules or rule in promo.rules):
                value *= promo.multiplier
        return value * self.tier(tier).multiplier
