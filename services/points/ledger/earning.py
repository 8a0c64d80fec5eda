"""Earning from events: what a rule gives a member for an event, booked by the
database function `points_earn` (migrations/versions/0006_points_earn_function.py).

`earn_by_rule` books one event (in the caller's session, or on the engine as a
transaction of its own); `earn_many` books a batch of a tenant's events in a few
statements whatever its size. Both give the same entries, lots, tier changes and
events as booking the events one after the other.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from services.points.ledger import booking, repository
from services.points.ledger.booking import Booked
from services.points.ledger.repository import RuleEarning, RuleEarningArgs
from services.points.ledger.schemas import MAX_POINTS
from services.points.members import in_passes
from services.points.rules.service import TenantRules, apply_multiplier
from services.points.tiers import service as tiers

T = TypeVar("T")


@dataclass(frozen=True)
class Earning:
    """An event's earning by a rule, for a member (see `earn_by_rule`)."""

    contact_id: uuid.UUID
    rule: str
    base_points: int
    occurred_at: datetime
    source_key: str
    reason: str
    order_id: str | None = None
    details: dict[str, Any] | None = None
    daily_cap: int | None = None


@dataclass(frozen=True)
class _Moment:
    """What an earning's rule and moment decide, the same for every earning of a batch
    by that rule at that moment (computed once for them)."""

    day: str
    multipliers: dict[str, str]
    ceiling: int
    expires_at: datetime
    growth_since: datetime | None


def _moment(rule: str, at: datetime, rules: TenantRules) -> _Moment:
    multipliers = {t.name: str(rules.rules.multiplier(rule, at, t.name)) for t in rules.rules.tiers}
    multipliers[""] = str(rules.rules.multiplier(rule, at, None))
    # One entry holds at most MAX_POINTS: an earning beyond (the largest order at the
    # highest rate and multipliers) earns that much, rather than overflowing the ledger
    # and failing its event for good.
    ceiling = MAX_POINTS // max(1, math.ceil(max(Decimal(m) for m in multipliers.values())))
    by_growth = rules.rules.growth_measure == "points_earned"
    return _Moment(
        day=rules.local_day(at).isoformat(),
        multipliers=multipliers,
        ceiling=ceiling,
        expires_at=rules.expires_at(at),
        growth_since=(at - timedelta(days=rules.rules.growth_window_days) if by_growth else None),
    )


def _planned(
    earning: Earning,
    rules: TenantRules,
    moments: dict[tuple[str, datetime], _Moment] | None = None,
) -> tuple[Earning, RuleEarningArgs]:
    """The earning with its base within what one entry holds, and its `points_earn` call
    (`moments` keeps what a batch's earnings share)."""
    at = earning.occurred_at
    key = (earning.rule, at)
    moment = moments.get(key) if moments is not None else None
    if moment is None:
        moment = _moment(earning.rule, at, rules)
        if moments is not None:
            moments[key] = moment
    day, multipliers, ceiling = moment.day, moment.multipliers, moment.ceiling
    if earning.base_points > ceiling:
        earning = replace(
            earning,
            base_points=ceiling,
            details={**(earning.details or {}), "base_points_uncapped": earning.base_points},
        )
    return earning, RuleEarningArgs(
        contact_id=earning.contact_id,
        rule=earning.rule,
        base_points=earning.base_points,
        multipliers=multipliers,
        day=day,
        daily_cap=earning.daily_cap,
        source_key=earning.source_key,
        reason=earning.reason,
        order_id=earning.order_id,
        details={**(earning.details or {}), "day": day, "base_points": earning.base_points},
        earned_at=at,
        expires_at=moment.expires_at,
        growth_since=moment.growth_since,
    )


def _booked(found: RuleEarning) -> Booked:
    assert found.entry_id is not None and found.points is not None
    assert found.balance_after is not None and found.created_at is not None
    return Booked(
        found.entry_id,
        found.account_id,
        found.contact_id,
        "earn",
        found.points,
        found.balance_after,
        found.created_at,
        replayed=found.outcome == "replayed",
    )


def _may_move_up(found: RuleEarning, rules: TenantRules) -> bool:
    """Whether the booked (or replayed) earning's account may take a tier: it has none
    yet, or the growth `points_earn` saw reaches a higher one. Also when replayed: a
    retry after a failure between the earning and the upgrade upgrades."""
    if found.tier is None:
        return True
    return (
        rules.rules.growth_measure == "points_earned"
        and found.growth is not None
        and rules.rules.rank(tiers.reached(rules.rules, found.growth).name)
        > rules.rules.rank(found.tier)
    )


async def earn_by_rule(
    db: AsyncSession | AsyncEngine,
    tenant_id: uuid.UUID,
    contact_id: uuid.UUID,
    *,
    rule: str,
    base_points: int,
    occurred_at: datetime,
    source_key: str,
    rules: TenantRules,
    reason: str,
    order_id: str | None = None,
    details: dict[str, Any] | None = None,
    daily_cap: int | None = None,
) -> Booked | None:
    """Credit what a rule gives for an event (None when it gives nothing now).

    With a session the earning joins the caller's transaction (event handlers);
    with the engine it is a transaction of its own, one round trip to the database.
    A member who owes points from a clawback, or whose earning reaches a higher tier,
    takes a second step (in the session's transaction, or in one more of its own).
    """
    earning, args = _planned(
        Earning(
            contact_id,
            rule,
            base_points,
            occurred_at,
            source_key,
            reason,
            order_id,
            details,
            daily_cap,
        ),
        rules,
    )
    found = await repository.earn_by_rule(db, tenant_id, args)
    if found.outcome in ("nothing", "capped"):
        return None
    if found.outcome == "debt":
        return await _in_transaction(
            db, lambda session: _earn_settling_debt(session, tenant_id, earning, rules)
        )
    booked = _booked(found)
    if _may_move_up(found, rules):
        await _in_transaction(
            db, lambda session: _upgrade(session, tenant_id, found.contact_id, rules, occurred_at)
        )
    return booked


async def earn_many(
    session: AsyncSession, tenant_id: uuid.UUID, earnings: list[Earning], rules: TenantRules
) -> list[Booked | None]:
    """`earn_by_rule` for a batch of the tenant's events, in the session's transaction:
    what each booked (None when it gave nothing), in the batch's order.

    One statement books the earnings, and the accounts that may take a tier move up
    together (tiers.upgrade_many_if_reached). A member's next event in the batch earns
    with the tier its previous one gave, so it waits for the next pass: a batch of
    distinct members is one pass. Within a pass the accounts lock in contact order,
    so concurrent batches cannot deadlock. A member who owes points settles the debt
    from the earning on its own (rare).
    """
    moments: dict[tuple[str, datetime], _Moment] = {}
    planned = [_planned(earning, rules, moments) for earning in earnings]
    booked: list[Booked | None] = [None] * len(earnings)
    passes = in_passes(list(range(len(earnings))), member=lambda i: earnings[i].contact_id)
    for indices in passes:
        indices.sort(key=lambda i: earnings[i].contact_id)
        found = await repository.earn_many_by_rule(
            session, tenant_id, [planned[i][1] for i in indices]
        )
        moving_up: list[tuple[uuid.UUID, datetime]] = []
        for i, result in zip(indices, found, strict=True):
            earning = planned[i][0]
            if result.outcome == "debt":
                booked[i] = await _earn_settling_debt(session, tenant_id, earning, rules)
            elif result.outcome not in ("nothing", "capped"):
                booked[i] = _booked(result)
                if _may_move_up(result, rules):
                    moving_up.append((result.contact_id, earning.occurred_at))
        await tiers.upgrade_many_if_reached(session, tenant_id, moving_up, rules)
    return booked


async def _in_transaction(
    db: AsyncSession | AsyncEngine, work: Callable[[AsyncSession], Awaitable[T]]
) -> T:
    """`work` in the session's transaction, or in a new one on the engine."""
    if isinstance(db, AsyncSession):
        return await work(db)
    async with AsyncSession(db, expire_on_commit=False) as session, session.begin():
        return await work(session)


async def _upgrade(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    contact_id: uuid.UUID,
    rules: TenantRules,
    at: datetime,
) -> None:
    account = await repository.lock_account(session, tenant_id, contact_id)
    await tiers.upgrade_if_reached(session, account, rules, at)


async def _earn_settling_debt(
    session: AsyncSession, tenant_id: uuid.UUID, earning: Earning, rules: TenantRules
) -> Booked | None:
    """An earning for a member with a debt: the debt is settled from it first."""
    account = await repository.lock_account(session, tenant_id, earning.contact_id)
    at = earning.occurred_at
    multiplier = rules.rules.multiplier(earning.rule, at, account.tier)
    points = apply_multiplier(earning.base_points, multiplier)
    if points <= 0:
        return None
    day = rules.local_day(at).isoformat()
    if earning.daily_cap is not None:
        # Counted under the account's lock: concurrent events cannot both pass the cap.
        booked_that_day, _ = await repository.count_on_day(session, account.id, earning.rule, day)
        if booked_that_day >= earning.daily_cap:
            return None
    booked = await booking.earn(
        session,
        account,
        points,
        expires_at=rules.expires_at(at),
        earned_at=at,
        source_key=earning.source_key,
        rule=earning.rule,
        reason=earning.reason,
        order_id=earning.order_id,
        details={
            **(earning.details or {}),
            "day": day,
            "base_points": earning.base_points,
            "multiplier": str(multiplier),
        },
    )
    if not booked.replayed:
        await tiers.upgrade_if_reached(session, account, rules, at)
    return booked
