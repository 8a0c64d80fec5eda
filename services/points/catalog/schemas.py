"""HTTP contract of the redemption catalog: items, lottery prizes, redemptions."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.points.ledger.schemas import MAX_POINTS

ItemKind = Literal["coupon", "lottery", "points_cash"]
MAX_STOCK = 100_000_000
MAX_FEN = 10_000_000_000  # ¥100 million
Stock = Annotated[int, Field(ge=0, le=MAX_STOCK)]
Limit = Annotated[int, Field(ge=1, le=1_000_000)]
HoldMinutes = Annotated[int, Field(ge=1, le=7 * 24 * 60)]
Name = Annotated[str, Field(min_length=1, max_length=200)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PrizeIn(_Strict):
    """One line of a lottery's prize table: odds are weight / sum of the weights in play."""

    name: Name
    weight: Annotated[int, Field(ge=1, le=1_000_000)]
    # None: unlimited. A blank ("thanks for playing") never runs out, so it has none.
    stock: Stock | None = None
    blank: bool = False

    @model_validator(mode="after")
    def _blank_unlimited(self) -> PrizeIn:
        if self.blank and self.stock is not None:
            raise ValueError("a blank prize never runs out: leave its stock out")
        return self


class ItemIn(_Strict):
    sku: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
    kind: ItemKind
    name: Name
    # Omitted: a coupon costs its value at the tenant's points_per_yuan_off, a draw 100.
    points_cost: Annotated[int | None, Field(ge=1, le=MAX_POINTS)] = None
    # points_cash: the cash part of the price (fen).
    cash_fen: Annotated[int, Field(ge=0, le=MAX_FEN)] = 0
    # coupon: the value it takes off (fen).
    coupon_value_fen: Annotated[int | None, Field(ge=1, le=MAX_FEN)] = None
    stock: Stock | None = None
    per_member_limit: Limit | None = None
    hold_minutes: HoldMinutes = 30
    active: bool = True
    prizes: Annotated[list[PrizeIn] | None, Field(min_length=1, max_length=100)] = None

    @model_validator(mode="after")
    def _fits_kind(self) -> ItemIn:
        if self.kind == "coupon" and self.coupon_value_fen is None:
            raise ValueError("a coupon needs coupon_value_fen")
        if self.kind != "coupon" and self.coupon_value_fen is not None:
            raise ValueError("only a coupon has coupon_value_fen")
        if self.kind == "lottery" and not self.prizes:
            raise ValueError("a lottery needs prizes")
        if self.kind != "lottery" and self.prizes is not None:
            raise ValueError("only a lottery has prizes")
        if self.kind == "points_cash":
            if self.cash_fen <= 0:
                raise ValueError("a points_cash item needs cash_fen > 0")
            if self.points_cost is None:
                raise ValueError("a points_cash item needs points_cost")
        elif self.cash_fen:
            raise ValueError("only a points_cash item has cash_fen")
        return self


class ItemPatch(_Strict):
    """Fields to change; an explicit null stock or per_member_limit means unlimited."""

    name: Name | None = None
    active: bool | None = None
    points_cost: Annotated[int | None, Field(ge=1, le=MAX_POINTS)] = None
    stock: Stock | None = None
    per_member_limit: Limit | None = None
    hold_minutes: HoldMinutes | None = None

    @model_validator(mode="after")
    def _something(self) -> ItemPatch:
        if not self.model_fields_set:
            raise ValueError("send at least one field to change")
        for field in ("name", "active", "points_cost", "hold_minutes"):
            if field in self.model_fields_set and getattr(self, field) is None:
                raise ValueError(f"{field} cannot be null")
        return self

    def changes(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.model_fields_set}


class PrizeOut(BaseModel):
    id: int
    position: int
    name: str
    weight: int
    stock: int | None
    blank: bool


class ItemOut(BaseModel):
    id: uuid.UUID
    sku: str
    kind: ItemKind
    name: str
    points_cost: int
    cash_fen: int
    coupon_value_fen: int | None
    stock: int | None = Field(description="Left to redeem; null: unlimited")
    per_member_limit: int | None
    hold_minutes: int
    active: bool
    created_at: datetime
    prizes: list[PrizeOut] = []


class ItemPage(BaseModel):
    items: list[ItemOut]
    next_cursor: str | None


class PrizeWon(BaseModel):
    id: int
    name: str
    blank: bool


class RedemptionOut(BaseModel):
    """A redemption of a catalog item; `balance` is the member's after it."""

    id: int
    item_id: uuid.UUID
    kind: ItemKind
    contact_id: uuid.UUID
    status: Literal["completed", "held", "spent", "released"]
    points: int = Field(description="Points the item cost (taken from the balance)")
    cash_fen: int
    balance: int
    entry_id: int
    reversal_entry_id: int | None = None
    order_id: str | None = None
    expires_at: datetime | None = Field(None, description="points_cash: when the hold lapses")
    seed: str | None = Field(None, description="lottery: the seed the outcome was drawn from")
    prize: PrizeWon | None = None
    created_at: datetime
    updated_at: datetime


class DrawCheck(BaseModel):
    """A lottery outcome recomputed from its stored seed and prize table."""

    redemption_id: int
    seed: str
    algorithm: str
    ticket: int
    total_weight: int
    recorded_prize_id: int
    recomputed_prize_id: int
    matches: bool
