"""HTTP contract of the points ledger (and of the service's status)."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.service_status import ServiceStatus

MAX_POINTS = 100_000_000


class PointsStatus(ServiceStatus):
    """Bus status of the points service for one tenant."""


class ExpiringSoon(BaseModel):
    expires_on: date
    points: int


class Account(BaseModel):
    contact_id: uuid.UUID
    balance: int
    debt: int = Field(description="Points a refund took beyond the balance; earnings settle it")
    lifetime_earned: int
    lifetime_spent: int
    expiring_soon: list[ExpiringSoon]
    expiring_soon_total: int


class Entry(BaseModel):
    id: int
    kind: str
    points: int
    debt_delta: int
    balance_after: int
    reason: str
    rule: str | None = None
    order_id: str | None = None
    expires_at: datetime | None = None
    details: dict[str, Any] = {}
    created_by: str | None = None
    created_at: datetime


class LedgerPage(BaseModel):
    items: list[Entry]
    next_cursor: str | None


class AdjustmentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    points: Annotated[int, Field(ge=-MAX_POINTS, le=MAX_POINTS)]
    reason: Annotated[str, Field(min_length=1, max_length=500)]

    @model_validator(mode="after")
    def _nonzero(self) -> AdjustmentIn:
        if self.points == 0:
            raise ValueError("points must not be 0")
        return self


class RedemptionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    points: Annotated[int | None, Field(gt=0, le=MAX_POINTS)] = None
    reason: Annotated[str, Field(min_length=1, max_length=500)] = "redemption"
    item_id: Annotated[str | None, Field(min_length=1, max_length=64)] = None
    # A points + cash item: the shop order its points are held for.
    order_id: Annotated[str | None, Field(min_length=1, max_length=128)] = None

    @model_validator(mode="after")
    def _one_of(self) -> RedemptionIn:
        if (self.points is None) == (self.item_id is None):
            raise ValueError("send either points or item_id")
        return self


class Booking(BaseModel):
    """An entry just booked, with the account's balance after it."""

    entry_id: int
    contact_id: uuid.UUID
    kind: str
    points: int
    balance: int
    created_at: datetime
