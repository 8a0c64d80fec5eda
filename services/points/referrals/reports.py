"""The referral report of a window of tenant-local days (`GET /v1/points/referrals/report`).

The window is `first` to `last`, both included (tenant-local days); by default the
last 30 days up to today. Each figure is about a cohort, with its members' state now:

- funnel: the referrals *attributed* in the window (attribution attempts, refused ones
  too): `invites` all of them, `attributed` those not refused, `qualified` those that
  reached qualified or beyond (`qualified_at` set, revoked later or not), `succeeded`
  those rewarded, `revoked` and `refused` with a count per reason;
- new contacts: the contacts who *joined* in the window (the read model's
  `joined_at`, the users service's creation time). `level1_share`: the share of them
  attributed to an inviter (an invitee); `level2_share`: the share whose inviter was
  invited too (`level2_inviter_id` set), a part of level 1;
- paid conversion: of those new contacts, the share with a paid order (by now), for the
  invited ones and for the organic ones (no attributed referral; a refused attempt
  does not make a contact invited);
- top inviters: the 10 with the most succeeded, then attributed, referrals of the window;
- K-factor (the viral coefficient per active inviter): `inviters` the distinct inviters
  of the window's attributed referrals, `invites_per_inviter` = attributed / inviters,
  `conversion` = succeeded / attributed, `k_factor` = invites_per_inviter x conversion
  (= succeeded / inviters: new customers each inviter brought);
- D1 retention: of the invitees attributed on day d of the window, the share active (an
  interaction or an order, `referral_activity`) on the tenant-local day d + 1. Only
  cohorts whose day after has ended count in the total (`complete`);
- reward cost per acquired customer: the rewards *granted* in the window (points at
  their redemption value, 100 / points_per_yuan_off fen a point; coupons at their
  value; items at their points cost's redemption value), minus those of them clawed
  back since, in fen, divided by the window's succeeded referrals.

An "invitee" is an attributed referral's contact, not counting a referral revoked as
`merged` or `self_invite` (the same person counted twice, or no one new). Every
figure is a few set-based statements over indexed ranges of the tenant's rows.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.points.referrals.config import load_config
from services.points.referrals.report_models import invitee_condition
from services.points.rules.service import load_rules
from shared.errors import InvalidInput
from shared.tenancy import tenant_timezone

DEFAULT_DAYS = 30
MAX_DAYS = 366
TOP_INVITERS = 10
FIRST_DAY = date(1970, 1, 1)
LAST_DAY = date(9998, 12, 31)
# A cohort smaller than this says little about retention: it raises no alert.
ALERT_MIN_INVITEES = 5
ALERT_KIND = "d1_retention"
REPORT_WORK_MEM = "64MB"

# An attributed referral that counts a new person (see the module's docstring).
INVITEE = invitee_condition("r")
_IN_WINDOW = "r.tenant_id = :t AND r.attributed_at >= :start AND r.attributed_at < :end"


@dataclass(frozen=True)
class Window:
    first: date
    last: date  # included
    timezone: str
    start: datetime  # the first day's local midnight
    end: datetime  # the local midnight after the last day

    @property
    def days(self) -> int:
        return (self.last - self.first).days + 1

    def midnights(self) -> list[datetime]:
        """The local midnight starting each day, and the one ending the last."""
        zone = ZoneInfo(self.timezone)
        return [
            datetime.combine(self.first + timedelta(days=n), time(0), zone)
            for n in range(self.days + 1)
        ]


def window(first: date | None, last: date | None, *, today: date, timezone: str) -> Window:
    """The window of tenant-local days `first` to `last` (both included); `last` is today
    and `first` 29 days before `last` by default. 422 when `first` is after `last`, for
    more than 366 days, or outside 1970-9998."""
    for name, day in (("from", first), ("to", last)):
        if day is not None and not FIRST_DAY <= day <= LAST_DAY:
            raise InvalidInput(
                f"{name} must be a day from {FIRST_DAY} to {LAST_DAY}",
                details={"field": name, "value": day.isoformat()},
            )
    last = last or today
    first = first or last - timedelta(days=DEFAULT_DAYS - 1)
    if first > last:
        raise InvalidInput(
            "from must not be after to",
            details={"from": first.isoformat(), "to": last.isoformat()},
        )
    span = (last - first).days + 1
    if span > MAX_DAYS:
        raise InvalidInput(
            f"the window is {span} days; at most {MAX_DAYS}",
            details={"from": first.isoformat(), "to": last.isoformat(), "max_days": MAX_DAYS},
        )
    zone = ZoneInfo(timezone)
    return Window(
        first,
        last,
        timezone,
        datetime.combine(first, time(0), zone),
        datetime.combine(last + timedelta(days=1), time(0), zone),
    )


# The top inviters, and how many inviters there are (counted before the limit).
_TOP_INVITERS = text(
    f"""
    SELECT r.inviter_id AS contact_id, count(*) AS attributed,
           count(*) FILTER (WHERE r.status = 'rewarded') AS succeeded,
           count(*) OVER () AS inviters
      FROM referrals r
     WHERE {_IN_WINDOW} AND r.status <> 'refused'
     GROUP BY r.inviter_id
     ORDER BY succeeded DESC, attributed DESC, r.inviter_id
     LIMIT {TOP_INVITERS}
    """
)

# The window's referrals by day, status and reason, with each group's invitees and how
# many of them were active on the (tenant-local) day after: the funnel and the D1
# cohorts in one pass. A referral's day is its place among the window's local midnights
# (`width_bucket`, 1 for the first day): no time zone conversion a row, and right across
# DST. OFFSET 0 keeps the subquery apart, so that place is found once a row.
_BY_DAY = text(
    f"""
    SELECT w.bucket, w.status, w.reason, count(*) AS n, count(w.qualified_at) AS qualified,
           count(w.invitee_id) AS invitees, count(a.day) AS retained
      FROM (SELECT r.status, r.reason, r.qualified_at,
                   width_bucket(r.attributed_at, CAST(:midnights AS timestamptz[])) AS bucket,
                   CASE WHEN {INVITEE} THEN r.invitee_id END AS invitee_id
              FROM referrals r
             WHERE {_IN_WINDOW}
            OFFSET 0) AS w
      LEFT JOIN referral_activity a
        ON a.tenant_id = :t AND a.contact_id = w.invitee_id
       AND a.day = CAST(:first AS date) + w.bucket
     GROUP BY 1, 2, 3
    """
)

# The new contacts; at most one invitee referral each (uq_referrals_invitee).
_NEW_CONTACTS = text(
    f"""
    SELECT count(*) AS joined,
           count(r.id) AS invited,
           count(r.id) FILTER (WHERE r.level2_inviter_id IS NOT NULL) AS level2,
           count(*) FILTER (WHERE r.id IS NOT NULL AND c.first_paid_at IS NOT NULL)
               AS invited_paid,
           count(*) FILTER (WHERE r.id IS NULL AND c.first_paid_at IS NOT NULL) AS organic_paid
      FROM referral_contacts c
      LEFT JOIN referrals r
        ON r.tenant_id = c.tenant_id AND r.invitee_id = c.contact_id AND {INVITEE}
     WHERE c.tenant_id = :t AND c.joined_at >= :start AND c.joined_at < :end
    """
)

# The rewards granted in the window by kind, apart those clawed back since; an item at
# its catalog points cost (0 for an item no longer in the catalog).
_REWARDS = text(
    """
    WITH granted AS (
        SELECT w.kind, w.status = 'clawed_back' AS clawed_back, w.sku, count(*) AS n,
               sum(w.points) AS points, sum(w.value_fen) AS value_fen
          FROM referral_rewards w
         WHERE w.tenant_id = :t AND w.granted_at >= :start AND w.granted_at < :end
         GROUP BY 1, 2, 3
    )
    SELECT g.kind, g.clawed_back, CAST(sum(g.n) AS bigint) AS n,
           CAST(sum(g.points) AS bigint) AS points, CAST(sum(g.value_fen) AS bigint) AS value_fen,
           CAST(COALESCE(sum(g.n * i.points_cost), 0) AS bigint) AS item_points
      FROM granted g
      LEFT JOIN points_items i ON g.kind = 'item' AND i.tenant_id = :t AND i.sku = g.sku
     GROUP BY 1, 2
    """
)

_ALERTS = text(
    """
    SELECT id, cohort_day, invitees, retained, details, delivered_at, delivery_error,
           created_at
      FROM referral_alerts
     WHERE tenant_id = :t AND kind = :kind AND cohort_day BETWEEN :first AND :last
     ORDER BY cohort_day
    """
)


def share(part: int, whole: int) -> float | None:
    """part / whole to 4 decimals; None when there is no whole."""
    return round(part / whole, 4) if whole else None


def fen_of_points(points: int, points_per_yuan_off: int) -> int:
    """What points are worth redeemed, in fen (100 / points_per_yuan_off each), rounded
    half up."""
    return (points * 200 + points_per_yuan_off) // (2 * points_per_yuan_off)


async def by_day(session: AsyncSession, tenant_id: uuid.UUID, span: Window) -> list[Any]:
    """The window's referrals counted by day, status and reason (`_BY_DAY`)."""
    found = await session.execute(
        _BY_DAY,
        {
            "t": tenant_id,
            "start": span.start,
            "end": span.end,
            "first": span.first,
            "midnights": span.midnights(),
        },
    )
    return list(found)


def cohorts(days: list[Any], span: Window, today: date) -> list[dict[str, Any]]:
    """Each day's invitees and those active the day after; `complete` once that day
    after has ended (before `today`)."""
    counted: dict[int, tuple[int, int]] = {}
    for row in days:
        invitees, retained = counted.get(row.bucket, (0, 0))
        counted[row.bucket] = (invitees + row.invitees, retained + row.retained)
    found = []
    for bucket, (invitees, retained) in sorted(counted.items()):
        day = span.first + timedelta(days=bucket - 1)
        if invitees:
            found.append(
                {
                    "day": day,
                    "invitees": invitees,
                    "retained": retained,
                    "d1_retention": share(retained, invitees),
                    "complete": day + timedelta(days=1) < today,
                }
            )
    return found


def funnel(days: list[Any]) -> dict[str, Any]:
    """The funnel of the window's referrals, with the reasons of revocations and
    refusals."""
    found: dict[str, Any] = dict.fromkeys(
        ("invites", "attributed", "qualified", "succeeded", "revoked", "refused"), 0
    )
    found |= {"revoked_by_reason": {}, "refused_by_reason": {}}
    for row in days:
        found["invites"] += row.n
        found["qualified"] += row.qualified
        if row.status != "refused":
            found["attributed"] += row.n
        if row.status == "rewarded":
            found["succeeded"] += row.n
        if row.status in ("revoked", "refused"):
            found[row.status] += row.n
            reasons = found[f"{row.status}_by_reason"]
            reason = row.reason or "unknown"
            reasons[reason] = reasons.get(reason, 0) + row.n
    return found


async def referral_report(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    *,
    first: date | None,
    last: date | None,
    now: datetime,
) -> dict[str, Any]:
    """The referral report of the window (see the module's docstring)."""
    timezone = await tenant_timezone(session, tenant_id)
    today = now.astimezone(ZoneInfo(timezone)).date()
    span = window(first, last, today=today, timezone=timezone)
    params = {"t": tenant_id, "start": span.start, "end": span.end}
    # The window's rows are grouped in memory: the planner expects a group a row for a
    # computed day, and would otherwise sort them all.
    await session.execute(text(f"SET LOCAL work_mem = '{REPORT_WORK_MEM}'"))
    days = await by_day(session, tenant_id, span)
    counts = funnel(days)
    top = (await session.execute(_TOP_INVITERS, params)).all()
    inviters = top[0].inviters if top else 0
    attributed, succeeded = counts["attributed"], counts["succeeded"]
    joined = (await session.execute(_NEW_CONTACTS, params)).one()
    organic = joined.joined - joined.invited
    cohort_days = cohorts(days, span, today)
    measured = [d for d in cohort_days if d["complete"]]
    invitees = sum(d["invitees"] for d in measured)
    retained = sum(d["retained"] for d in measured)
    config = await load_config(session, tenant_id)
    alerts = await session.execute(
        _ALERTS, {"t": tenant_id, "kind": ALERT_KIND, "first": span.first, "last": span.last}
    )
    return {
        "window": {
            "from": span.first,
            "to": span.last,
            "days": span.days,
            "timezone": timezone,
            "starts_at": span.start,
            "ends_at": span.end,
        },
        "generated_at": now,
        "funnel": counts,
        "new_contacts": {
            "joined": joined.joined,
            "level1": joined.invited,
            "level1_share": share(joined.invited, joined.joined),
            "level2": joined.level2,
            "level2_share": share(joined.level2, joined.joined),
        },
        "paid_conversion": {
            "invited": {
                "contacts": joined.invited,
                "paid": joined.invited_paid,
                "share": share(joined.invited_paid, joined.invited),
            },
            "organic": {
                "contacts": organic,
                "paid": joined.organic_paid,
                "share": share(joined.organic_paid, organic),
            },
        },
        "top_inviters": [
            {"contact_id": r.contact_id, "attributed": r.attributed, "succeeded": r.succeeded}
            for r in top
        ],
        "k_factor": {
            "inviters": inviters,
            "attributed": attributed,
            "succeeded": succeeded,
            "invites_per_inviter": share(attributed, inviters),
            "conversion": share(succeeded, attributed),
            "k_factor": share(succeeded, inviters),
        },
        "d1_retention": {
            "invitees": invitees,
            "retained": retained,
            "d1_retention": share(retained, invitees),
            "measured_through": measured[-1]["day"] if measured else None,
            "alert_below": config.d1_retention_alert_below,
            "cohorts": cohort_days,
        },
        "reward_cost": await _reward_cost(session, tenant_id, params, succeeded),
        "alerts": [dict(a) for a in alerts.mappings()],
    }


async def _reward_cost(
    session: AsyncSession, tenant_id: uuid.UUID, params: dict[str, Any], acquired: int
) -> dict[str, Any]:
    rate = (await load_rules(session, tenant_id)).rules.points_per_yuan_off
    sums = {
        clawed: {"rewards": 0, "points": 0, "points_fen": 0, "coupons_fen": 0, "items_fen": 0}
        for clawed in (False, True)
    }
    for row in await session.execute(_REWARDS, params):
        part = sums[row.clawed_back]
        part["rewards"] += row.n
        if row.kind == "points":
            part["points"] += row.points
            part["points_fen"] += fen_of_points(row.points, rate)
        elif row.kind == "coupon":
            part["coupons_fen"] += row.value_fen
        else:
            part["items_fen"] += fen_of_points(row.item_points, rate)
    granted = {k: sums[False][k] + sums[True][k] for k in sums[False]}
    for part in (granted, sums[True]):
        part["total_fen"] = part["points_fen"] + part["coupons_fen"] + part["items_fen"]
    net = granted["total_fen"] - sums[True]["total_fen"]
    return {
        "points_per_yuan_off": rate,
        "granted": granted,
        "clawed_back": sums[True],
        "net_fen": net,
        "acquired": acquired,
        "per_acquired_fen": (net * 2 + acquired) // (2 * acquired) if acquired else None,
    }
