"""Every SQL statement of RFM, value tiers and health (profile.scores): one statement
scores a whole batch of contacts (or a whole tenant), comparing against the tenant's
stored boundaries; one statement recomputes those boundaries."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

# Event types that are no interaction of the contact's own (as in profile.ingest).
NOT_INTERACTION = ["consent.opt_in", "consent.opt_out", "order.refunded"]


@dataclass(frozen=True)
class Boundaries:
    """Four ascending cut points each; engagement_ref scores full engagement."""

    recency_days: list[float]
    frequency: list[float]
    monetary_fen: list[float]
    engagement_ref: float | None


# Per contact over the window: orders not wholly refunded, what they netted, the last
# of them; interactions counted by tenant-local day over the engagement window. Each
# part is materialized once and read by contact id (`{only}`: the batch's contacts, or
# none for the whole tenant), so a plan stays linear even before the tables have
# statistics.
_FACTS = """
    o AS MATERIALIZED (
        SELECT o.contact_id,
               count(*) AS frequency,
               sum(o.amount_fen - o.refunded_fen) AS monetary,
               max(o.paid_at) AS last_paid
          FROM tagging_orders o
         WHERE o.tenant_id = :tenant {only_o} AND o.amount_fen > o.refunded_fen
           AND o.paid_at > CAST(:now AS timestamptz) - make_interval(days => :window_days)
           AND o.paid_at <= CAST(:now AS timestamptz)
         GROUP BY o.contact_id
    ), e AS MATERIALIZED (
        SELECT d.contact_id, sum(d.n) AS n
          FROM tagging_event_days d
         WHERE d.tenant_id = :tenant {only_d}
           AND d.day > (SELECT (CAST(:now AS timestamptz)
                                AT TIME ZONE coalesce(max(t.timezone), 'Asia/Shanghai'))::date
                          FROM tenants t WHERE t.id = :tenant) - CAST(:engagement_days AS int)
           AND d.event_type <> ALL(CAST(:not_interaction AS text[]))
         GROUP BY d.contact_id
    ), calc AS MATERIALIZED (
        SELECT p.contact_id, p.first_order_at, p.created_at,
               p.rfm_cell AS old_cell, p.value_tier AS old_tier, p.health_score AS old_health,
               (p.recency_days::int, p.frequency::int, p.monetary_fen::bigint, p.r_score::int,
                p.f_score::int, p.m_score::int, p.rfm_cell::text, p.value_tier::text,
                p.health_score::int) AS old_row,
               o.frequency, o.monetary,
               floor(extract(epoch FROM CAST(:now AS timestamptz) - o.last_paid) / 86400)::int
                   AS recency,
               coalesce(e.n, 0) AS interactions
          FROM tagging_profiles p
          LEFT JOIN o USING (contact_id) LEFT JOIN e USING (contact_id)
         WHERE p.tenant_id = :tenant {only_p} AND p.status = 'live'
    )
"""

# 1 + how many of the four cut points the value is under (recency) or above (F, M).
_R = "1 + " + " + ".join(f"(recency <= b.r[{i}])::int" for i in range(1, 5))
_F = "1 + " + " + ".join(f"(frequency > b.f[{i}])::int" for i in range(1, 5))
_M = "1 + " + " + ".join(f"(monetary > b.m[{i}])::int" for i in range(1, 5))

_SCORE = f"""
    WITH {{facts}},
    b AS (
        SELECT CAST(:r_bounds AS float8[]) AS r, CAST(:f_bounds AS float8[]) AS f,
               CAST(:m_bounds AS float8[]) AS m
    ), scored AS MATERIALIZED (
        SELECT calc.*,
               CASE WHEN recency IS NOT NULL THEN {_R} END AS r,
               CASE WHEN frequency IS NOT NULL THEN {_F} END AS f,
               CASE WHEN monetary IS NOT NULL THEN {_M} END AS m
          FROM calc, b
    ), graded AS MATERIALIZED (
        SELECT scored.*,
               CASE WHEN r IS NULL THEN NULL
                    ELSE CASE WHEN m >= :high THEN 'important_' ELSE 'general_' END ||
                         CASE WHEN r >= :high AND f >= :high THEN 'value'
                              WHEN r >= :high THEN 'develop'
                              WHEN f >= :high THEN 'keep'
                              ELSE 'retain' END
               END AS cell,
               CASE WHEN r IS NULL THEN
                        CASE WHEN first_order_at IS NOT NULL THEN 'dormant' END
                    WHEN r <= :dormant_r THEN 'dormant'
                    WHEN r + f + m >= :high_value_total THEN 'high_value'
                    ELSE 'mid_active' END AS tier,
               round(100
                   * (0.1 + 0.9 * least(1.0, interactions / CAST(:engagement_ref AS float8)))
                   * (CASE WHEN m IS NULL THEN 0.1 ELSE 0.2 + 0.8 * (m - 1) / 4.0 END)
                   * (0.1 + 0.9 * least(1.0, greatest(0.0,
                         extract(epoch FROM CAST(:now AS timestamptz) - created_at)
                         / 86400.0 / :tenure_days)))
               )::int AS health
          FROM scored
    )
    UPDATE tagging_profiles p
       SET recency_days = g.recency, frequency = g.frequency, monetary_fen = g.monetary,
           r_score = g.r, f_score = g.f, m_score = g.m, rfm_cell = g.cell,
           value_tier = g.tier, health_score = g.health, scored_at = CAST(:now AS timestamptz)
      FROM graded g
     WHERE p.tenant_id = :tenant AND p.contact_id = g.contact_id
       AND g.old_row IS DISTINCT FROM
           (g.recency::int, g.frequency::int, g.monetary::bigint, g.r::int, g.f::int, g.m::int,
            g.cell::text, g.tier::text, g.health::int)
    RETURNING p.contact_id,
              g.old_cell IS DISTINCT FROM g.cell AS cell_changed,
              g.old_tier IS DISTINCT FROM g.tier AS tier_changed,
              g.old_health IS DISTINCT FROM g.health AS health_changed
"""


def _facts(batch: bool) -> str:
    only = "AND {}.contact_id = ANY(CAST(:contacts AS uuid[]))"
    return _FACTS.strip().format(
        only_o=only.format("o") if batch else "",
        only_d=only.format("d") if batch else "",
        only_p=only.format("p") if batch else "",
    )


_SCORE_CONTACTS = text(_SCORE.format(facts=_facts(True)))
_SCORE_TENANT = text(_SCORE.format(facts=_facts(False)))


@dataclass(frozen=True)
class ScoreChange:
    contact_id: uuid.UUID
    fields: list[str]


def _params(
    tenant_id: uuid.UUID, bounds: Boundaries, settings: dict[str, Any], now: datetime
) -> dict[str, Any]:
    return {
        "tenant": tenant_id,
        "now": now,
        "r_bounds": bounds.recency_days,
        "f_bounds": bounds.frequency,
        "m_bounds": bounds.monetary_fen,
        "engagement_ref": bounds.engagement_ref or settings["engagement_target"],
        "not_interaction": NOT_INTERACTION,
        **{k: v for k, v in settings.items() if k != "engagement_target"},
    }


async def score(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    contacts: Sequence[uuid.UUID] | None,
    bounds: Boundaries,
    settings: dict[str, Any],
    now: datetime,
) -> list[ScoreChange]:
    """Score the contacts (None: every live contact of the tenant) against the stored
    boundaries; returns which of cell, tier and health changed, per contact."""
    params = _params(tenant_id, bounds, settings, now)
    if contacts is None:
        statement = _SCORE_TENANT
    elif not contacts:
        return []
    else:
        statement = _SCORE_CONTACTS
        params["contacts"] = list(contacts)
    changes: list[ScoreChange] = []
    for row in await session.execute(statement, params):
        fields = [
            name
            for name, changed in (
                ("rfm_cell", row.cell_changed),
                ("value_tier", row.tier_changed),
                ("health_score", row.health_changed),
            )
            if changed
        ]
        if fields:
            changes.append(ScoreChange(row.contact_id, fields))
    return changes


_BOUNDARIES = text(
    "WITH "
    + _facts(False)
    + """
    INSERT INTO tagging_score_boundaries
           (tenant_id, recency_days, frequency, monetary_fen, engagement_max, buyers,
            computed_at)
    SELECT :tenant,
           coalesce(percentile_cont(ARRAY[0.2, 0.4, 0.6, 0.8]) WITHIN GROUP (ORDER BY recency)
                    FILTER (WHERE recency IS NOT NULL), ARRAY[0, 0, 0, 0]::float8[]),
           coalesce(percentile_cont(ARRAY[0.2, 0.4, 0.6, 0.8]) WITHIN GROUP (ORDER BY frequency)
                    FILTER (WHERE frequency IS NOT NULL), ARRAY[0, 0, 0, 0]::float8[]),
           coalesce(percentile_cont(ARRAY[0.2, 0.4, 0.6, 0.8]) WITHIN GROUP (ORDER BY monetary)
                    FILTER (WHERE monetary IS NOT NULL), ARRAY[0, 0, 0, 0]::float8[]),
           coalesce(percentile_cont(0.9) WITHIN GROUP (ORDER BY interactions)
                    FILTER (WHERE interactions > 0), 0),
           count(*) FILTER (WHERE frequency IS NOT NULL),
           CAST(:now AS timestamptz)
      FROM calc
    ON CONFLICT (tenant_id) DO UPDATE
       SET recency_days = EXCLUDED.recency_days, frequency = EXCLUDED.frequency,
           monetary_fen = EXCLUDED.monetary_fen, engagement_max = EXCLUDED.engagement_max,
           buyers = EXCLUDED.buyers, computed_at = EXCLUDED.computed_at
    RETURNING recency_days, frequency, monetary_fen, engagement_max
    """
)


async def compute_boundaries(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    window_days: int,
    engagement_days: int,
    now: datetime,
) -> Boundaries:
    """Recompute and store the tenant's quintile cut points over its live buyers (orders
    in the window), and the 90th percentile of interactions among those with any."""
    row = (
        await session.execute(
            _BOUNDARIES,
            {
                "tenant": tenant_id,
                "now": now,
                "window_days": window_days,
                "engagement_days": engagement_days,
                "not_interaction": NOT_INTERACTION,
            },
        )
    ).one()
    return Boundaries(
        list(row.recency_days),
        list(row.frequency),
        list(row.monetary_fen),
        row.engagement_max or None,
    )


async def stored_boundaries(
    session: AsyncSession, tenant_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, Boundaries]:
    if not tenant_ids:
        return {}
    rows = await session.execute(
        text(
            "SELECT tenant_id, recency_days, frequency, monetary_fen, engagement_max "
            "FROM tagging_score_boundaries WHERE tenant_id = ANY(CAST(:tenants AS uuid[]))"
        ),
        {"tenants": list(tenant_ids)},
    )
    return {
        row.tenant_id: Boundaries(
            list(row.recency_days),
            list(row.frequency),
            list(row.monetary_fen),
            row.engagement_max or None,
        )
        for row in rows
    }


async def tenants_with_profiles(session: AsyncSession) -> list[uuid.UUID]:
    rows = await session.execute(
        text(
            "SELECT t.id FROM tenants t WHERE EXISTS "
            "(SELECT 1 FROM tagging_profiles p WHERE p.tenant_id = t.id) ORDER BY t.id"
        )
    )
    return list(rows.scalars())
