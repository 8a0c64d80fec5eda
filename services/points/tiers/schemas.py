"""HTTP contract of membership tiers."""

from __future__ import annotations

from datetime import date, datetime

from pydantic import BaseModel, Field


class RetentionStatus(BaseModel):
    required: dict[str, int]
    orders_this_quarter: int
    points_this_year: int
    met: bool
    next_review: date


class TierStatus(BaseModel):
    tier: str
    since: datetime | None
    growth_measure: str
    growth: int
    next_tier: str | None
    missing: int = Field(description="Growth still needed for the next tier")
    retention: RetentionStatus
