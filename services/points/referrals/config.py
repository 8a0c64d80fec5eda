"""A tenant's referral configuration: the hold, the anti-fraud thresholds, the
rewards. Defaults from SPEC §5; stored as one JSON document per tenant.

The inviter's invite points per succeeded referral are the points rules'
`earning.invite.points` (200 by default, `PUT /v1/points/config`).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.points.ledger.schemas import MAX_POINTS
from services.points.referrals.models import ReferralSettings

MAX_FEN = 10_000_000_000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Reward(_Strict):
    """Points, a coupon (a value off, in fen) or a catalog item (by sku): never cash."""

    kind: Literal["points", "coupon", "item"]
    name: Annotated[str, Field(min_length=1, max_length=200)]
    points: Annotated[int | None, Field(ge=1, le=MAX_POINTS)] = None
    value_fen: Annotated[int | None, Field(ge=1, le=MAX_FEN)] = None
    sku: Annotated[str | None, Field(min_length=1, max_length=64)] = None

    @model_validator(mode="after")
    def _fits_kind(self) -> Reward:
        wanted = {"points": "points", "coupon": "value_fen", "item": "sku"}[self.kind]
        for field in ("points", "value_fen", "sku"):
            given = getattr(self, field) is not None
            if field == wanted and not given:
                raise ValueError(f"a {self.kind} reward needs {field}")
            if field != wanted and given:
                raise ValueError(f"a {self.kind} reward has no {field}")
        return self


class Tier(_Strict):
    """The reward for an inviter's `count`-th succeeded referral, paid once."""

    count: Annotated[int, Field(ge=1, le=1_000_000)]
    reward: Reward


def _default_tiers() -> list[Tier]:
    return [
        Tier(count=1, reward=Reward(kind="coupon", name="¥10 coupon", value_fen=1000)),
        Tier(count=5, reward=Reward(kind="item", name="Gift", sku="referral-gift")),
        Tier(
            count=10,
            reward=Reward(kind="item", name="Limited merchandise", sku="referral-limited"),
        ),
    ]


class ReferralConfig(_Strict):
    hold_days: Annotated[int, Field(ge=0, le=365)] = Field(
        default=7, description="Days after the invitee's first paid order before the reward."
    )
    dedupe_window_hours: Annotated[int, Field(ge=0, le=24 * 365)] = Field(
        default=24 * 30,
        description="The same device id or IP counts once per inviter within this window "
        "(0: no dedupe).",
    )
    velocity_per_minute: Annotated[int, Field(ge=1, le=100_000)] = Field(
        default=50,
        description="This many invites of one inviter within a minute put the inviter "
        "under manual review (their rewards wait).",
    )
    daily_cap: Annotated[int, Field(ge=1, le=1_000_000)] = Field(
        default=100,
        description="Invites counted per inviter and tenant-local day; more are refused "
        "(`daily_cap`).",
    )
    tiers: Annotated[list[Tier], Field(max_length=50)] = Field(default_factory=_default_tiers)
    invitee_reward: Reward | None = Field(
        default_factory=lambda: Reward(kind="coupon", name="¥5 no-threshold coupon", value_fen=500),
        description="The invitee's welcome reward on attribution (null: none).",
    )
    d1_retention_alert_below: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.3,
        description="The report alerts when invitees' D1 retention falls below this share.",
    )

    @model_validator(mode="after")
    def _distinct_tiers(self) -> ReferralConfig:
        counts = [t.count for t in self.tiers]
        if len(set(counts)) != len(counts):
            raise ValueError("each tier needs its own count")
        self.tiers.sort(key=lambda t: t.count)
        return self


async def load_config(session: AsyncSession, tenant_id: uuid.UUID) -> ReferralConfig:
    stored = await session.scalar(
        select(ReferralSettings.config).where(ReferralSettings.tenant_id == tenant_id)
    )
    return ReferralConfig.model_validate(stored) if stored else ReferralConfig()


async def save_config(
    session: AsyncSession, tenant_id: uuid.UUID, config: ReferralConfig
) -> ReferralConfig:
    document: dict[str, Any] = config.model_dump(mode="json")
    await session.execute(
        insert(ReferralSettings)
        .values(tenant_id=tenant_id, config=document)
        .on_conflict_do_update(
            index_elements=[ReferralSettings.tenant_id],
            set_={"config": document, "updated_at": text("now()")},
        )
    )
    return config
