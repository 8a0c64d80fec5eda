"""Health of a tenant's points economy: weekly earned/spent, annual inflation, alerts.

Points members earn but never spend are a liability that keeps growing (SPEC
§4: keep annual inflation at 8-12%). Each tenant-local week (from Monday) is
measured; when members spent less than `inflation_alert_ratio` (0.7) of what
they earned, an alert is recorded once for that week and posted to the
tenant's alert webhook, if one is configured (failed posts are retried on
later runs for a week).
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import date, datetime, time, timedelta
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.points.rules.service import TenantRules, load_rules

log = logging.getLogger("scrm.points.health")

_WEEK = text(
    """
    SELECT COALESCE(sum(points) FILTER (WHERE kind = 'earn'), 0) AS earned,
           COALESCE(-sum(points) FILTER (WHERE kind = 'spend'), 0) AS spent
      FROM points_ledger
     WHERE tenant_id = :t AND created_at >= :start AND created_at < :end
    """
)

_OUTSTANDING = text(
    "SELECT COALESCE(sum(points), 0) FROM points_ledger WHERE tenant_id = :t AND created_at < :at"
)


def week_start(rules: TenantRules, at: datetime) -> date:
    day = rules.local_day(at)
    return day - timedelta(days=day.weekday())


def _bounds(rules: TenantRules, monday: date) -> tuple[datetime, datetime]:
    start = datetime.combine(monday, time(0), rules.zone)
    return start, start + timedelta(days=7)


async def week(
    session: AsyncSession, tenant_id: uuid.UUID, rules: TenantRules, monday: date
) -> dict[str, Any]:
    start, end = _bounds(rules, monday)
    row = (await session.execute(_WEEK, {"t": tenant_id, "start": start, "end": end})).one()
    earned, spent = int(row.earned), int(row.spent)
    ratio = round(spent / earned, 4) if earned else None
    threshold = float(rules.rules.inflation_alert_ratio)
    return {
        "week_start": monday,
        "earned": earned,
        "spent": spent,
        "spent_to_earned": ratio,
        "alert": ratio is not None and ratio < threshold,
    }


async def report(
    session: AsyncSession, tenant_id: uuid.UUID, now: datetime, weeks: int
) -> dict[str, Any]:
    """The last `weeks` full weeks and the annual inflation of outstanding points."""
    rules = await load_rules(session, tenant_id)
    this_monday = week_start(rules, now)
    history = [
        await week(session, tenant_id, rules, this_monday - timedelta(days=7 * n))
        for n in range(weeks, 0, -1)
    ]
    outstanding_now = int(await session.scalar(_OUTSTANDING, {"t": tenant_id, "at": now}) or 0)
    year_ago = int(
        await session.scalar(_OUTSTANDING, {"t": tenant_id, "at": now - timedelta(days=365)}) or 0
    )
    inflation = round((outstanding_now - year_ago) / year_ago, 4) if year_ago else None
    return {
        "weeks": history,
        "outstanding_points": outstanding_now,
        "outstanding_a_year_ago": year_ago,
        "annual_inflation": inflation,
        "target_inflation": {"min": 0.08, "max": 0.12},
        "alert_ratio": float(rules.rules.inflation_alert_ratio),
    }


async def check_last_week(session: AsyncSession, tenant_id: uuid.UUID, now: datetime) -> int | None:
    """Record the alert for last week if due (once); its id when newly recorded."""
    rules = await load_rules(session, tenant_id)
    monday = week_start(rules, now) - timedelta(days=7)
    measured = await week(session, tenant_id, rules, monday)
    if not measured["alert"]:
        return None
    alert_id = await session.scalar(
        text(
            "INSERT INTO points_health_alerts (tenant_id, kind, week_start, earned, spent,"
            " details) VALUES (:t, 'inflation', :w, :e, :s, CAST(:d AS jsonb))"
            " ON CONFLICT ON CONSTRAINT uq_points_health_alert_week DO NOTHING RETURNING id"
        ),
        {
            "t": tenant_id,
            "w": monday,
            "e": measured["earned"],
            "s": measured["spent"],
            "d": json.dumps(
                {
                    "spent_to_earned": measured["spent_to_earned"],
                    "threshold": float(rules.rules.inflation_alert_ratio),
                }
            ),
        },
    )
    return None if alert_id is None else int(alert_id)


async def deliver_pending(
    session: AsyncSession, tenant_id: uuid.UUID, client: httpx.AsyncClient
) -> int:
    """Post undelivered alerts (up to a week old) to the tenant's webhook; how many went."""
    rules = await load_rules(session, tenant_id)
    url = rules.rules.alert_webhook_url
    if url is None:
        return 0
    pending = (
        (
            await session.execute(
                text(
                    "SELECT id, kind, week_start, earned, spent, details, created_at"
                    " FROM points_health_alerts WHERE tenant_id = :t AND delivered_at IS NULL"
                    " AND created_at > now() - interval '7 days' ORDER BY id FOR UPDATE SKIP LOCKED"
                ),
                {"t": tenant_id},
            )
        )
        .mappings()
        .all()
    )
    sent = 0
    for alert in pending:
        body = {
            "type": "points.inflation_alert",
            "tenant_id": str(tenant_id),
            "alert_id": alert["id"],
            "week_start": alert["week_start"].isoformat(),
            "earned": alert["earned"],
            "spent": alert["spent"],
            **alert["details"],
        }
        try:
            response = await client.post(str(url), json=body, timeout=10)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            log.warning("alert %s not delivered: %s", alert["id"], exc)
            await session.execute(
                text("UPDATE points_health_alerts SET delivery_error = :e WHERE id = :id"),
                {"e": f"{type(exc).__name__}: {exc}"[:500], "id": alert["id"]},
            )
            continue
        await session.execute(
            text(
                "UPDATE points_health_alerts SET delivered_at = now(), delivery_error = NULL"
                " WHERE id = :id"
            ),
            {"id": alert["id"]},
        )
        sent += 1
    return sent


async def list_alerts(session: AsyncSession, tenant_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = await session.execute(
        text(
            "SELECT id, kind, week_start, earned, spent, details, delivered_at, delivery_error,"
            " created_at FROM points_health_alerts WHERE tenant_id = :t ORDER BY week_start DESC"
        ),
        {"t": tenant_id},
    )
    return [dict(r) for r in rows.mappings()]
