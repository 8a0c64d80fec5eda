"""SQL of lifecycle stages (profile.lifecycle) and of the tenants' profile settings."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

# -- settings ------------------------------------------------------------------------------


async def load_settings(
    session: AsyncSession, tenant_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, dict[str, Any]]:
    """The stored settings documents of the tenants that have one."""
    if not tenant_ids:
        return {}
    rows = await session.execute(
        text(
            "SELECT tenant_id, settings FROM tagging_settings "
            "WHERE tenant_id = ANY(CAST(:tenants AS uuid[]))"
        ),
        {"tenants": list(tenant_ids)},
    )
    return {row.tenant_id: dict(row.settings) for row in rows}


async def save_settings(
    session: AsyncSession, tenant_id: uuid.UUID, document: dict[str, Any], now: datetime
) -> None:
    await session.execute(
        text(
            """
            INSERT INTO tagging_settings (tenant_id, settings, updated_at)
            VALUES (:tenant, CAST(:settings AS jsonb), :now)
            ON CONFLICT (tenant_id) DO UPDATE
               SET settings = EXCLUDED.settings, updated_at = EXCLUDED.updated_at
            """
        ),
        {"tenant": tenant_id, "settings": json.dumps(document), "now": now},
    )


# -- lifecycle -----------------------------------------------------------------------------

# The stage of each profile from its facts at :now, what it next becomes due at with no
# new event, and since when it holds (a stage reached by the passage of time holds
# from the moment it was due, not from when it was noticed).
_RECOMPUTE_STAGES = text(
    """
    WITH cur AS (
        SELECT p.contact_id, p.lifecycle_stage AS old_stage, p.stage_since, p.stage_due_at,
               p.first_order_at, p.lost_at, p.lost_reason,
               greatest(p.last_interaction_at, p.last_order_at) AS last_active
          FROM tagging_profiles p
         WHERE p.tenant_id = :tenant AND p.contact_id = ANY(CAST(:contacts AS uuid[]))
           AND p.status = 'live'
    ), calc AS (
        SELECT cur.*, s.stage, s.reason, s.due, s.since
          FROM cur, LATERAL (
            SELECT * FROM (VALUES
                (cur.lost_reason = 'deleted_by_contact', 1, 'churned', 'deleted_by_contact',
                 NULL::timestamptz, least(:now, coalesce(cur.lost_at, :now))),
                (cur.first_order_at IS NULL, 2, 'potential', 'never_ordered',
                 NULL::timestamptz, CAST(:now AS timestamptz)),
                (cur.first_order_at > :now - make_interval(days => :new_days), 3, 'new',
                 'first_order', cur.first_order_at + make_interval(days => :new_days),
                 least(:now, cur.first_order_at)),
                (cur.last_active > :now - make_interval(days => :active_days), 4, 'active',
                 'recent_activity', cur.last_active + make_interval(days => :active_days),
                 least(:now, greatest(cur.last_active,
                                      cur.first_order_at + make_interval(days => :new_days)))),
                (cur.last_active > :now - make_interval(days => :churn_days), 5, 'silent',
                 'inactive', cur.last_active + make_interval(days => :churn_days),
                 least(:now, cur.last_active + make_interval(days => :active_days))),
                (true, 6, 'churned', 'inactive', NULL::timestamptz,
                 least(:now, coalesce(cur.last_active, :now)
                             + make_interval(days => :churn_days)))
            ) AS v(applies, rank, stage, reason, due, since)
            WHERE v.applies ORDER BY v.rank LIMIT 1
          ) s
    )
    UPDATE tagging_profiles p
       SET lifecycle_stage = calc.stage,
           stage_since = CASE WHEN calc.stage = calc.old_stage THEN p.stage_since
                              ELSE calc.since END,
           stage_due_at = calc.due,
           updated_at = :now
      FROM calc
     WHERE p.tenant_id = :tenant AND p.contact_id = calc.contact_id
       AND (calc.stage <> calc.old_stage OR calc.due IS DISTINCT FROM calc.stage_due_at)
    RETURNING p.contact_id, calc.old_stage, calc.stage, p.stage_since, calc.reason
    """
)


@dataclass(frozen=True)
class StageChange:
    contact_id: uuid.UUID
    from_stage: str
    to_stage: str
    since: datetime
    reason: str


async def recompute_stages(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    contacts: Sequence[uuid.UUID],
    thresholds: dict[str, int],
    now: datetime,
) -> list[StageChange]:
    """Recompute the stage (and when it is next due) of live profiles; the stage
    changes."""
    if not contacts:
        return []
    rows = await session.execute(
        _RECOMPUTE_STAGES,
        {"tenant": tenant_id, "contacts": list(contacts), "now": now, **thresholds},
    )
    return [
        StageChange(row.contact_id, row.old_stage, row.stage, row.stage_since, row.reason)
        for row in rows
        if row.old_stage != row.stage
    ]


_CLAIM_DUE_STAGES = text(
    """
    SELECT tenant_id, contact_id FROM tagging_profiles
     WHERE stage_due_at IS NOT NULL AND stage_due_at <= :now
     ORDER BY stage_due_at LIMIT :limit
       FOR UPDATE SKIP LOCKED
    """
)


async def claim_due_stages(
    session: AsyncSession, now: datetime, limit: int
) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """Profiles whose stage is due to change by now (through the partial index on
    stage_due_at), locked for this transaction; others' claims are skipped."""
    rows = await session.execute(_CLAIM_DUE_STAGES, {"now": now, "limit": limit})
    return [(row.tenant_id, row.contact_id) for row in rows]
