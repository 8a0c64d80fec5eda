"""HTTP contract of member benefits."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Period = Literal["week", "month", "quarter", "year"]


class BenefitIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9_-]+$")]
    name: Annotated[str, Field(min_length=1, max_length=200)]
    tiers: list[Annotated[str, Field(min_length=1, max_length=32)]] = []
    member_quota: Annotated[int | None, Field(ge=1, le=1_000_000)] = None
    member_period: Period = "month"
    total_quota: Annotated[int | None, Field(ge=1, le=100_000_000)] = None
    total_period: Period = "week"
    active: bool = True


class BenefitOut(BenefitIn):
    model_config = ConfigDict(extra="ignore")

    id: uuid.UUID
