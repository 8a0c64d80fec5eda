"""A tenant's points rules as the other parts use them: loaded with the tenant's
timezone, stored as one JSON document per tenant (the models are in schemas.py)."""

from __future__ import annotations

import uuid
from datetime import date, datetime, time, timedelta
from decimal import ROUND_FLOOR, Decimal
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import ValidationError
from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.points.models import PointsConfig
from services.points.rules.schemas import PointsRules
from shared.errors import InvalidInput
from shared.models import Tenant


def apply_multiplier(points: int, multiplier: Decimal) -> int:
    return int((Decimal(points) * multiplier).to_integral_value(rounding=ROUND_FLOOR))


def add_months(at: datetime, months: int) -> datetime:
    """Same day `months` later (the last day of a shorter month)."""
    month0 = at.month - 1 + months
    year, month = at.year + month0 // 12, month0 % 12 + 1
    for day in (at.day, 30, 29, 28):
        try:
            return at.replace(year=year, month=month, day=day)
        except ValueError:
            continue
    raise AssertionError("unreachable")


class TenantRules:
    """A tenant's rules with its timezone: what the ledger's callers need."""

    def __init__(self, rules: PointsRules, timezone: str) -> None:
        self.rules = rules
        self.zone = ZoneInfo(timezone)

    def local_day(self, at: datetime) -> date:
        return at.astimezone(self.zone).date()

    def day_start(self, at: datetime) -> datetime:
        return datetime.combine(self.local_day(at), time(0), self.zone)

    def expires_at(self, earned_at: datetime) -> datetime:
        return add_months(earned_at, self.rules.expiry_months)

    def warning_window(self) -> timedelta:
        return timedelta(days=self.rules.expiry_warning_days)


async def load_rules(session: AsyncSession, tenant_id: uuid.UUID) -> TenantRules:
    row = (
        await session.execute(
            select(PointsConfig.config, Tenant.timezone)
            .select_from(Tenant)
            .outerjoin(PointsConfig, PointsConfig.tenant_id == Tenant.id)
            .where(Tenant.id == tenant_id)
        )
    ).one()
    rules = PointsRules.model_validate(row.config) if row.config else PointsRules()
    return TenantRules(rules, row.timezone)


async def save_rules(session: AsyncSession, tenant_id: uuid.UUID, rules: PointsRules) -> None:
    """Store `rules`, refusing a document that would not load back (a URL that its
    normalised form makes too long, say): a tenant's rules must always load."""
    config: dict[str, Any] = rules.model_dump(mode="json")
    try:
        PointsRules.model_validate(config)
    except ValidationError as exc:
        raise InvalidInput(
            "the rules would not load back once stored",
            details=[
                {"loc": [str(p) for p in e["loc"]], "message": e["msg"], "type": e["type"]}
                for e in exc.errors()
            ],
        ) from None
    await session.execute(
        insert(PointsConfig)
        .values(tenant_id=tenant_id, config=config)
        .on_conflict_do_update(
            index_elements=[PointsConfig.tenant_id],
            set_={"config": config, "updated_at": text("now()")},
        )
    )
