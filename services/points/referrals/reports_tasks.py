"""The referral report's event handlers (its read model) and its retention alert job.

The read model (report_models.py) is fed by the users service's events, each handler
set-based (a statement or two per batch) and interested only in the events it has
something to record, so the many others are neither enqueued nor loaded:

- `points.referral_joined`: `contact.profile_changed` gives a contact's `joined_at`
  (its `created_at`, inserted if absent; the earliest known wins);
- `points.referral_first_paid`: `order.paid` gives its `first_paid_at` (the earliest);
- `points.referral_d1_activity`: an invitee's interaction or order (`ACTIVITY`) on the
  tenant-local day after their attribution is recorded (that day only);
- `points.merge_referral_report`: a merged contact's rows fold into the survivor's.

Events about a merged contact count for its survivor.

The alert job (`check_referral_retention`, hourly): for each tenant, the cohorts of
the last 7 days whose day after ended (2 hours ago at least, for late events) are
measured. A cohort of at least `ALERT_MIN_INVITEES` invitees whose D1 retention is
below the tenant's `d1_retention_alert_below` is recorded once (per tenant and cohort
day) and posted to the tenant's `alert_webhook_url`; failed posts are retried on
later runs for a week.
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.points.ledger import repository
from services.points.ledger.booking import now as clock_now
from services.points.referrals import reports
from services.points.referrals.config import load_config
from services.points.rules.service import load_rules
from shared.events import Event, subscribe, subscribe_many
from shared.scheduler import ScheduledWork, recurring_job
from shared.tenancy import tenant_timezone

log = logging.getLogger("scrm.points.referrals.reports")

ACTIVITY = (
    "order.paid",
    "checkin",
    "comment",
    "page.view",
    "product.view",
    "cart.add",
    "share",
    "live.watch",
)
COHORT_DAYS_CHECKED = 7
LATE_EVENTS = timedelta(hours=2)

# Payload fields in an interest: NULL when not what they should be (never a failing cast).
_UUID = "'^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$'"
_TIMESTAMP = "'^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}'"


def _uuid_of(key: str) -> str:
    return f"(CASE WHEN o.payload->>'{key}' ~ {_UUID} THEN CAST(o.payload->>'{key}' AS uuid) END)"


def _at_of(key: str) -> str:
    field = f"o.payload->>'{key}'"
    return f"(CASE WHEN {field} ~ {_TIMESTAMP} THEN CAST({field} AS timestamptz) END)"


def _known(column: str, key: str) -> str:
    """The contact's `column` is known already at the payload's `key` time or earlier."""
    return (
        "EXISTS (SELECT 1 FROM referral_contacts c WHERE c.tenant_id = o.tenant_id "
        f"AND c.contact_id = {_uuid_of('contact_id')} AND c.{column} <= {_at_of(key)})"
    )


# An invitee (not refused) attributed within the 50 hours before the event (the local
# day before, whatever the time of day and a DST shift), and not recorded active yet.
# An attribution delayed past the event makes it interesting later: the redelivery
# sweep then brings it, which is what the report wants.
_D1_CANDIDATE = (
    "EXISTS (SELECT 1 FROM referrals r WHERE r.tenant_id = o.tenant_id "
    f"AND r.invitee_id = {_uuid_of('contact_id')} AND r.status <> 'refused' "
    f"AND r.attributed_at < {_at_of('occurred_at')} "
    f"AND r.attributed_at > {_at_of('occurred_at')} - interval '50 hours' "
    "AND NOT EXISTS (SELECT 1 FROM referral_activity a WHERE a.tenant_id = r.tenant_id "
    "AND a.contact_id = r.invitee_id))"
)

_JOINED = text(
    """
    INSERT INTO referral_contacts AS c (tenant_id, contact_id, joined_at)
    SELECT u.t, u.c, min(u.at)
      FROM unnest(CAST(:tenants AS uuid[]), CAST(:contacts AS uuid[]),
                  CAST(:ats AS timestamptz[])) AS u(t, c, at)
     GROUP BY u.t, u.c
     ORDER BY u.t, u.c
    ON CONFLICT (tenant_id, contact_id) DO UPDATE SET joined_at = EXCLUDED.joined_at
     WHERE c.joined_at IS NULL OR c.joined_at > EXCLUDED.joined_at
    """
)

_FIRST_PAID = text(
    """
    INSERT INTO referral_contacts AS c (tenant_id, contact_id, first_paid_at)
    SELECT u.t, u.c, min(u.at)
      FROM unnest(CAST(:tenants AS uuid[]), CAST(:contacts AS uuid[]),
                  CAST(:ats AS timestamptz[])) AS u(t, c, at)
     GROUP BY u.t, u.c
     ORDER BY u.t, u.c
    ON CONFLICT (tenant_id, contact_id) DO UPDATE SET first_paid_at = EXCLUDED.first_paid_at
     WHERE c.first_paid_at IS NULL OR c.first_paid_at > EXCLUDED.first_paid_at
    """
)

# The events' contacts that are invitees active on the local day after their attribution.
_ACTIVE_NEXT_DAY = text(
    """
    INSERT INTO referral_activity (tenant_id, contact_id, day)
    SELECT DISTINCT r.tenant_id, r.invitee_id, CAST((u.at AT TIME ZONE :tz) AS date)
      FROM unnest(CAST(:contacts AS uuid[]), CAST(:ats AS timestamptz[])) AS u(c, at)
      JOIN referrals r
        ON r.tenant_id = :t AND r.invitee_id = u.c AND r.status <> 'refused'
     WHERE CAST((u.at AT TIME ZONE :tz) AS date)
         = CAST((r.attributed_at AT TIME ZONE :tz) AS date) + 1
     ORDER BY 1, 2, 3
    ON CONFLICT DO NOTHING
    """
)


def _at(event: Event, key: str) -> datetime | None:
    raw = event.payload.get(key)
    try:
        found = datetime.fromisoformat(raw) if isinstance(raw, str) else None
    except ValueError:
        return None
    return found if found is not None and found.tzinfo is not None else None


async def _facts(
    session: AsyncSession, events: list[Event], key: str
) -> list[tuple[uuid.UUID, uuid.UUID, datetime]]:
    """(tenant, live contact, the payload's `key` time) of the events about a live
    contact (a merged one's survivor), in tenant and contact order."""
    from services.points.tasks import _by_member  # the points service's member resolution

    found = []
    for event, tenant_id, contact in await _by_member(session, events):
        at = _at(event, key)
        if at is not None:
            found.append((tenant_id, contact, at))
    return found


async def _upsert(session: AsyncSession, statement: Any, facts: list[Any]) -> None:
    if facts:
        await session.execute(
            statement,
            {
                "tenants": [f[0] for f in facts],
                "contacts": [f[1] for f in facts],
                "ats": [f[2] for f in facts],
            },
        )


@subscribe_many(
    "points",
    "contact.profile_changed",
    name="points.referral_joined",
    interest=f"NOT {_known('joined_at', 'created_at')}",
)
async def record_joined(session: AsyncSession, events: list[Event]) -> None:
    """When each contact joined (its creation), for the report's new contacts."""
    await _upsert(session, _JOINED, await _facts(session, events, "created_at"))


@subscribe_many(
    "points",
    "order.paid",
    name="points.referral_first_paid",
    interest=f"NOT {_known('first_paid_at', 'occurred_at')}",
)
async def record_first_paid(session: AsyncSession, events: list[Event]) -> None:
    """When each contact first paid, for the report's paid conversion."""
    await _upsert(session, _FIRST_PAID, await _facts(session, events, "occurred_at"))


@subscribe_many("points", *ACTIVITY, name="points.referral_d1_activity", interest=_D1_CANDIDATE)
async def record_d1_activity(session: AsyncSession, events: list[Event]) -> None:
    """An invitee active on the tenant-local day after their attribution (D1)."""
    by_tenant: dict[uuid.UUID, list[tuple[uuid.UUID, datetime]]] = {}
    for tenant_id, contact, at in await _facts(session, events, "occurred_at"):
        by_tenant.setdefault(tenant_id, []).append((contact, at))
    for tenant_id, found in sorted(by_tenant.items()):
        await session.execute(
            _ACTIVE_NEXT_DAY,
            {
                "t": tenant_id,
                "tz": await tenant_timezone(session, tenant_id),
                "contacts": [c for c, _ in found],
                "ats": [at for _, at in found],
            },
        )


@subscribe("points", "contact.merged", name="points.merge_referral_report")
async def merge_referral_report(session: AsyncSession, event: Event) -> None:
    """The merged contact's joined and first-paid times and activity become the
    survivor's (the earliest of both); once, however often the event comes."""
    try:
        survivor = uuid.UUID(str(event.payload["survivor_id"]))
        merged = uuid.UUID(str(event.payload["merged_id"]))
    except (KeyError, ValueError):
        log.warning("contact.merged %s without contact ids", event.event_id)
        return
    if event.tenant_id is None:
        return
    params = {"t": event.tenant_id, "s": survivor, "m": merged}
    await session.execute(
        text(
            "WITH gone AS (DELETE FROM referral_contacts WHERE tenant_id = :t AND contact_id = :m"
            " RETURNING joined_at, first_paid_at)"
            " INSERT INTO referral_contacts AS c (tenant_id, contact_id, joined_at, first_paid_at)"
            " SELECT :t, :s, joined_at, first_paid_at FROM gone"
            " ON CONFLICT (tenant_id, contact_id) DO UPDATE"
            " SET joined_at = LEAST(c.joined_at, EXCLUDED.joined_at),"
            " first_paid_at = LEAST(c.first_paid_at, EXCLUDED.first_paid_at)"
        ),
        params,
    )
    await session.execute(
        text(
            "WITH gone AS (DELETE FROM referral_activity WHERE tenant_id = :t AND contact_id = :m"
            " RETURNING day)"
            " INSERT INTO referral_activity (tenant_id, contact_id, day)"
            " SELECT :t, :s, day FROM gone ON CONFLICT DO NOTHING"
        ),
        params,
    )


# -- the D1 retention alert ------------------------------------------------------------


async def record_retention_alerts(
    session: AsyncSession, tenant_id: uuid.UUID, now: datetime
) -> list[int]:
    """Record the alerts due for the tenant's last measurable cohorts (each once): the
    ids newly recorded."""
    timezone = await tenant_timezone(session, tenant_id)
    today = (now - LATE_EVENTS).astimezone(ZoneInfo(timezone)).date()
    last = today - timedelta(days=2)  # its day after ended LATE_EVENTS ago
    span = reports.window(
        last - timedelta(days=COHORT_DAYS_CHECKED - 1), last, today=today, timezone=timezone
    )
    threshold = (await load_config(session, tenant_id)).d1_retention_alert_below
    recorded = []
    days = await reports.by_day(session, tenant_id, span)
    for cohort in reports.cohorts(days, span, today):
        retention = cohort["d1_retention"]
        if cohort["invitees"] < reports.ALERT_MIN_INVITEES or retention >= threshold:
            continue
        alert_id = await session.scalar(
            text(
                "INSERT INTO referral_alerts (tenant_id, kind, cohort_day, invitees, retained,"
                " details) VALUES (:t, :kind, :day, :n, :kept, CAST(:d AS jsonb))"
                " ON CONFLICT ON CONSTRAINT uq_referral_alerts_cohort DO NOTHING RETURNING id"
            ),
            {
                "t": tenant_id,
                "kind": reports.ALERT_KIND,
                "day": cohort["day"],
                "n": cohort["invitees"],
                "kept": cohort["retained"],
                "d": json.dumps({"d1_retention": retention, "threshold": threshold}),
            },
        )
        if alert_id is not None:
            recorded.append(int(alert_id))
    return recorded


async def deliver_alerts(
    session: AsyncSession, tenant_id: uuid.UUID, client: httpx.AsyncClient
) -> int:
    """Post undelivered alerts (up to a week old) to the tenant's webhook; how many went."""
    url = (await load_rules(session, tenant_id)).rules.alert_webhook_url
    if url is None:
        return 0
    pending = (
        await session.execute(
            text(
                "SELECT id, cohort_day, invitees, retained, details FROM referral_alerts"
                " WHERE tenant_id = :t AND delivered_at IS NULL"
                " AND created_at > now() - interval '7 days' ORDER BY id FOR UPDATE SKIP LOCKED"
            ),
            {"t": tenant_id},
        )
    ).all()
    sent = 0
    for alert in pending:
        body = {
            "type": "points.referral_retention_alert",
            "tenant_id": str(tenant_id),
            "alert_id": alert.id,
            "cohort_day": alert.cohort_day.isoformat(),
            "invitees": alert.invitees,
            "retained": alert.retained,
            **alert.details,
        }
        try:
            response = await client.post(str(url), json=body, timeout=10)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            log.warning(
                "referral alert %s of tenant %s not delivered: %s", alert.id, tenant_id, exc
            )
            await session.execute(
                text("UPDATE referral_alerts SET delivery_error = :e WHERE id = :id"),
                {"e": f"{type(exc).__name__}: {exc}"[:500], "id": alert.id},
            )
            continue
        await session.execute(
            text(
                "UPDATE referral_alerts SET delivered_at = now(), delivery_error = NULL"
                " WHERE id = :id"
            ),
            {"id": alert.id},
        )
        sent += 1
    return sent


@recurring_job("points", "check_referral_retention", every_seconds=3600)
async def check_referral_retention(session: AsyncSession, work: ScheduledWork) -> None:
    """Each tenant's invitees' D1 retention: record and post an alert when too low."""
    now = clock_now()
    async with httpx.AsyncClient() as client:
        for tenant_id in await repository.tenant_ids(session):
            recorded = await record_retention_alerts(session, tenant_id, now)
            if recorded:
                log.info(
                    "referral retention alert",
                    extra={"tenant_id": str(tenant_id), "alert_ids": recorded},
                )
            await deliver_alerts(session, tenant_id, client)
