"""HTTP contract of the profile part: the tenant's lifecycle and score settings, and a
contact's profile."""

from __future__ import annotations

import itertools
import uuid
from datetime import datetime
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

Stage = Literal["potential", "new", "active", "silent", "churned"]
Cell = Literal[
    "important_value",
    "important_develop",
    "important_keep",
    "important_retain",
    "general_value",
    "general_develop",
    "general_keep",
    "general_retain",
]
ValueTier = Literal["high_value", "mid_active", "dormant"]

# The 8-cell grid: (R high, F high, M high) -> code, with its Chinese name.
CELLS: dict[tuple[bool, bool, bool], tuple[str, str]] = {
    (True, True, True): ("important_value", "重要价值"),
    (True, False, True): ("important_develop", "重要发展"),
    (False, True, True): ("important_keep", "重要保持"),
    (False, False, True): ("important_retain", "重要挽留"),
    (True, True, False): ("general_value", "一般价值"),
    (True, False, False): ("general_develop", "一般发展"),
    (False, True, False): ("general_keep", "一般保持"),
    (False, False, False): ("general_retain", "一般挽留"),
}
CELL_NAMES = {code: name for code, name in CELLS.values()}

Days = Field(ge=1, le=3650)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LifecycleSettings(_Strict):
    """Thresholds of the lifecycle stages, in days (SPEC §1)."""

    new_days: int = Field(7, ge=1, le=3650, description="A first order this recent: new.")
    active_days: int = Field(
        30, ge=1, le=3650, description="An interaction or order this recent: active."
    )
    churn_days: int = Field(
        90, ge=2, le=3650, description="No interaction or order for this long: churned."
    )

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.churn_days <= self.active_days:
            raise ValueError("churn_days must be greater than active_days")
        return self


def _ascending(values: list[float], name: str) -> None:
    if any(b < a for a, b in itertools.pairwise(values)):
        raise ValueError(f"{name} must be in ascending order")


class RfmThresholds(_Strict):
    """Fixed cut points (four each, ascending) for scores 1-5 instead of quintiles:
    recency at or under the first cut point scores 5; frequency and monetary above the
    last score 5."""

    recency_days: list[float] = Field(min_length=4, max_length=4)
    frequency: list[float] = Field(min_length=4, max_length=4)
    monetary_fen: list[float] = Field(min_length=4, max_length=4)

    @model_validator(mode="after")
    def _sorted(self) -> Self:
        for name in ("recency_days", "frequency", "monetary_fen"):
            values = getattr(self, name)
            if any(v < 0 for v in values):
                raise ValueError(f"{name} cut points must not be negative")
            _ascending(values, name)
        return self


class RfmSettings(_Strict):
    window_days: int = Field(365, ge=1, le=3650, description="Orders paid within it count.")
    scoring: Literal["quintile", "thresholds"] = Field(
        "quintile",
        description="quintile: scores by the tenant's buyers' quintiles, recomputed "
        "periodically; thresholds: by `thresholds`.",
    )
    thresholds: RfmThresholds | None = None
    high_score: int = Field(
        3, ge=2, le=5, description="A score at or above it is high in the 8-cell grid."
    )
    high_value_total: int = Field(
        12, ge=3, le=15, description="R+F+M at or above it: high_value (unless dormant)."
    )
    dormant_recency_score: int = Field(
        1, ge=1, le=5, description="An R score at or below it: dormant."
    )

    @model_validator(mode="after")
    def _thresholds_given(self) -> Self:
        if self.scoring == "thresholds" and self.thresholds is None:
            raise ValueError("scoring 'thresholds' needs thresholds")
        return self


class HealthSettings(_Strict):
    engagement_days: int = Field(
        30, ge=1, le=365, description="Interactions within it make the engagement index."
    )
    engagement_target: float = Field(
        10,
        gt=0,
        le=1_000_000,
        description="Interactions in the window that score full engagement when the "
        "tenant has no computed reference yet (the periodic job uses its buyers' 90th "
        "percentile).",
    )
    tenure_days: int = Field(
        365, ge=1, le=3650, description="Known this long: full active duration."
    )


class ProfileSettings(_Strict):
    """A tenant's settings of lifecycle stages, RFM and health (defaults from SPEC)."""

    lifecycle: LifecycleSettings = Field(default_factory=LifecycleSettings)
    rfm: RfmSettings = Field(default_factory=RfmSettings)
    health: HealthSettings = Field(default_factory=HealthSettings)


class StageOut(BaseModel):
    stage: Stage
    since: datetime | None = Field(description="None until the service has seen the contact.")
    due_at: datetime | None = Field(description="When it changes if nothing happens.")


class RfmOut(BaseModel):
    recency_days: int | None
    frequency: int | None
    monetary_fen: int | None
    r: int | None
    f: int | None
    m: int | None
    cell: Cell | None
    cell_name: str | None = Field(description="The cell's name (重要价值...).")
    value_tier: ValueTier | None
    scored_at: datetime | None


class TagOut(BaseModel):
    tag_id: int
    group_id: int
    name: str
    group: str
    weight: float = Field(description="The current (decayed) weight.")
    source: str


class SegmentOut(BaseModel):
    segment_id: int
    name: str
    entered_at: datetime


class ContactProfile(BaseModel):
    """What the tagging service knows about a contact."""

    contact_id: uuid.UUID
    created_at: datetime | None = Field(
        description="None until the service has seen the contact (no event of it yet)."
    )
    owner_staff: str | None
    channel: str | None
    consent: dict[str, str]
    attributes: dict[str, object]
    lifecycle: StageOut
    lost_at: datetime | None
    lost_reason: str | None
    first_order_at: datetime | None
    last_order_at: datetime | None
    last_interaction_at: datetime | None
    points_tier: str | None
    rfm: RfmOut
    health_score: int | None = Field(description="0-100.")
    tags: list[TagOut]
    segments: list[SegmentOut]
