"""Tier benefits with quotas, claimed exactly once and never beyond quota.

A benefit may limit each member (e.g. free shipping, 2 a month) and the whole
tenant (e.g. a diamond-only new-product trial, 100 a week). A claim locks the
member's account (so one member's concurrent claims take turns and count
each other) and takes one unit from the tenant-wide counter of the period
with a guarded UPDATE (so the hundred-and-first claim of the week finds
nothing left). Periods are tenant-local calendar weeks (from Monday),
months, quarters or years.
"""

from __future__ import annotations

import json
import uuid
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.points.exceptions import BenefitRefused
from services.points.ledger import repository
from services.points.members import require_live_member
from services.points.rules.service import TenantRules, load_rules

# What SPEC §4 describes: basic benefits for all, scarce ones with a tenant-wide quota.
DEFAULT_BENEFITS: list[dict[str, Any]] = [
    {
        "code": "free_shipping",
        "name": "Free-shipping coupon",
        "tiers": [],
        "member_quota": 2,
        "member_period": "month",
        "total_quota": None,
        "total_period": "week",
    },
    {
        "code": "new_product_trial",
        "name": "New-product trial",
        "tiers": ["diamond"],
        "member_quota": 1,
        "member_period": "month",
        "total_quota": 100,
        "total_period": "week",
    },
]

_COLUMNS = (
    "id, code, name, tiers, member_quota, member_period, total_quota, total_period, active,"
    " created_at"
)


def period_start(period: str, day: date) -> date:
    if period == "week":
        return day - timedelta(days=day.weekday())
    if period == "month":
        return day.replace(day=1)
    if period == "quarter":
        return date(day.year, 3 * ((day.month - 1) // 3) + 1, 1)
    return date(day.year, 1, 1)


async def ensure_defaults(session: AsyncSession, tenant_id: uuid.UUID) -> None:
    """A tenant starts with SPEC's benefits (once; editing or deactivating them sticks)."""
    for benefit in DEFAULT_BENEFITS:
        await session.execute(
            text(
                "INSERT INTO points_benefits (id, tenant_id, code, name, tiers, member_quota,"
                " member_period, total_quota, total_period) VALUES (:id, :t, :code, :name,"
                " CAST(:tiers AS jsonb), :member_quota, :member_period, :total_quota,"
                " :total_period) ON CONFLICT ON CONSTRAINT uq_points_benefits_code DO NOTHING"
            ),
            {
                **benefit,
                "id": uuid.uuid4(),
                "t": tenant_id,
                "tiers": json.dumps(benefit["tiers"]),
            },
        )


async def list_benefits(session: AsyncSession, tenant_id: uuid.UUID) -> list[dict[str, Any]]:
    await ensure_defaults(session, tenant_id)
    rows = await session.execute(
        text(f"SELECT {_COLUMNS} FROM points_benefits WHERE tenant_id = :t ORDER BY code"),
        {"t": tenant_id},
    )
    return [dict(r) for r in rows.mappings()]


async def upsert_benefit(
    session: AsyncSession, tenant_id: uuid.UUID, values: dict[str, Any]
) -> dict[str, Any]:
    """Create a benefit, or replace the settings of the one with this code."""
    await ensure_defaults(session, tenant_id)
    row = (
        (
            await session.execute(
                text(
                    "INSERT INTO points_benefits (id, tenant_id, code, name, tiers, member_quota,"
                    " member_period, total_quota, total_period, active)"
                    " VALUES (:id, :t, :code, :name,"
                    " CAST(:tiers AS jsonb), :member_quota, :member_period, :total_quota,"
                    " :total_period, :active) ON CONFLICT ON CONSTRAINT uq_points_benefits_code"
                    " DO UPDATE SET name = EXCLUDED.name, tiers = EXCLUDED.tiers,"
                    " member_quota = EXCLUDED.member_quota, member_period = EXCLUDED.member_period,"
                    " total_quota = EXCLUDED.total_quota, total_period = EXCLUDED.total_period,"
                    f" active = EXCLUDED.active RETURNING {_COLUMNS}"
                ),
                {
                    **values,
                    "id": uuid.uuid4(),
                    "t": tenant_id,
                    "tiers": json.dumps(values["tiers"]),
                },
            )
        )
        .mappings()
        .one()
    )
    return dict(row)


async def claim(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    contact_id: uuid.UUID,
    code: str,
    *,
    actor: str,
    now: datetime,
) -> dict[str, Any]:
    """Claim one unit of a benefit for a member, or raise BenefitRefused (nothing kept)."""
    await require_live_member(session, tenant_id, contact_id)
    await ensure_defaults(session, tenant_id)
    rules = await load_rules(session, tenant_id)
    benefit = (
        (
            await session.execute(
                text(f"SELECT {_COLUMNS} FROM points_benefits WHERE tenant_id = :t AND code = :c"),
                {"t": tenant_id, "c": code},
            )
        )
        .mappings()
        .first()
    )
    if benefit is None or not benefit["active"]:
        raise BenefitRefused("benefit_not_found", f"no active benefit {code!r}", status=404)
    account = await repository.lock_account(session, tenant_id, contact_id)
    tier = account.tier or rules.rules.tiers[0].name
    if benefit["tiers"] and tier not in benefit["tiers"]:
        raise BenefitRefused(
            "not_eligible",
            f"{code} is for {', '.join(benefit['tiers'])} members; this member is {tier}",
        )
    today = rules.local_day(now)
    member_start = period_start(benefit["member_period"], today)
    used_by_member = int(
        await session.scalar(
            text(
                "SELECT count(*) FROM points_benefit_claims WHERE benefit_id = :b"
                " AND account_id = :a AND member_period_start = :p"
            ),
            {"b": benefit["id"], "a": account.id, "p": member_start},
        )
        or 0
    )
    if benefit["member_quota"] is not None and used_by_member >= benefit["member_quota"]:
        raise BenefitRefused(
            "member_quota_reached",
            f"{code}: {benefit['member_quota']} per {benefit['member_period']} already claimed",
        )
    total_left = await _take_from_total(session, tenant_id, benefit, today)
    claim_id = await session.scalar(
        text(
            "INSERT INTO points_benefit_claims (tenant_id, benefit_id, account_id, contact_id,"
            " tier, member_period_start, claimed_on, created_by) VALUES (:t, :b, :a, :c, :tier,"
            " :p, :day, :actor) RETURNING id"
        ),
        {
            "t": tenant_id,
            "b": benefit["id"],
            "a": account.id,
            "c": contact_id,
            "tier": tier,
            "p": member_start,
            "day": today,
            "actor": actor,
        },
    )
    member_left = (
        None if benefit["member_quota"] is None else benefit["member_quota"] - used_by_member - 1
    )
    return {
        "claim_id": claim_id,
        "benefit": code,
        "contact_id": contact_id,
        "tier": tier,
        "member_remaining": member_left,
        "total_remaining": total_left,
        "claimed_on": today,
    }


async def _take_from_total(
    session: AsyncSession, tenant_id: uuid.UUID, benefit: Any, today: date
) -> int | None:
    if benefit["total_quota"] is None:
        return None
    start = period_start(benefit["total_period"], today)
    await session.execute(
        text(
            "INSERT INTO points_benefit_usage (tenant_id, benefit_id, period_start, used)"
            " VALUES (:t, :b, :p, 0)"
            " ON CONFLICT ON CONSTRAINT uq_points_benefit_usage_period DO NOTHING"
        ),
        {"t": tenant_id, "b": benefit["id"], "p": start},
    )
    used = await session.scalar(
        text(
            "UPDATE points_benefit_usage SET used = used + 1"
            " WHERE benefit_id = :b AND period_start = :p AND used < :quota RETURNING used"
        ),
        {"b": benefit["id"], "p": start, "quota": benefit["total_quota"]},
    )
    if used is None:
        raise BenefitRefused(
            "quota_exhausted",
            f"all {benefit['total_quota']} of this {benefit['total_period']} are claimed",
        )
    return int(benefit["total_quota"]) - int(used)


async def monthly_report(
    session: AsyncSession, tenant_id: uuid.UUID, month: date, rules: TenantRules
) -> list[dict[str, Any]]:
    """Per benefit: claims and claimants in the month, eligible members, the usage rate,
    and a flag when fewer than 15% of eligible members used it."""
    benefits = await list_benefits(session, tenant_id)
    start = month.replace(day=1)
    end = (start + timedelta(days=32)).replace(day=1)
    base = rules.rules.tiers[0].name
    report = []
    for benefit in benefits:
        usage = (
            await session.execute(
                text(
                    "SELECT count(*) AS claims, count(DISTINCT account_id) AS members"
                    " FROM points_benefit_claims WHERE benefit_id = :b"
                    " AND claimed_on >= :start AND claimed_on < :end"
                ),
                {"b": benefit["id"], "start": start, "end": end},
            )
        ).one()
        tiers = benefit["tiers"]
        eligible = int(
            await session.scalar(
                text(
                    "SELECT count(*) FROM points_accounts WHERE tenant_id = :t"
                    " AND (CAST(:any AS boolean)"
                    "      OR COALESCE(tier, :base) = ANY(CAST(:tiers AS text[])))"
                ),
                {"t": tenant_id, "any": not tiers, "base": base, "tiers": list(tiers)},
            )
            or 0
        )
        rate = usage.members / eligible if eligible else 0.0
        report.append(
            {
                "code": benefit["code"],
                "name": benefit["name"],
                "claims": int(usage.claims),
                "members_using": int(usage.members),
                "eligible_members": eligible,
                "usage_rate": round(rate, 4),
                "underused": eligible > 0 and rate < 0.15,
            }
        )
    return report
