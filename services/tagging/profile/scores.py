"""RFM scores, the 8-cell grid, value tiers and the health score.

Per contact, over the tenant's window (default 365 days) of orders paid and not
wholly refunded: R = days since the last, F = how many, M = what they netted (paid
minus refunded, fen). Each scores 1-5 against four cut points: the tenant's
quintiles over its live buyers (stored by the periodic job, `tagging.score_boundaries`,
so scoring a batch only compares against them) or the tenant's fixed thresholds.
R scores 5 at or under the first cut point (recent is good), F and M score 5 above
the last one.

- Cell: each of R, F, M is high when its score is at least `high_score` (default 3);
  M high → important_*, else general_*; then R and F both high → *_value, R only →
  *_develop, F only → *_keep, neither → *_retain (重要价值 ... 一般挽留).
- Value tier: dormant when R ≤ `dormant_recency_score` (default 1) or when the contact
  ordered before but not within the window; high_value when R+F+M ≥
  `high_value_total` (default 12); otherwise mid_active. No order ever: none.
- Health (0-100) = round(100 * E * S * D): engagement E = 0.1 + 0.9 * min(1,
  interactions in the last `engagement_days` / reference), the reference being the
  tenant's 90th percentile among contacts with any (periodic job; `engagement_target`
  until computed); spending power S = 0.2 + 0.8 * (M - 1) / 4 for a buyer in the
  window, 0.1 otherwise; active duration D = 0.1 + 0.9 * min(1, days known /
  `tenure_days`). Each factor is within [0.1, 1], so health is within [0, 100].
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from services.tagging.facts import Changes, field_fact
from services.tagging.profile import score_repository as repository
from services.tagging.profile.schemas import ProfileSettings
from services.tagging.profile.score_repository import Boundaries
from services.tagging.profile.service import tenant_settings


def _settings(settings: ProfileSettings) -> dict[str, Any]:
    return {
        "window_days": settings.rfm.window_days,
        "high": settings.rfm.high_score,
        "dormant_r": settings.rfm.dormant_recency_score,
        "high_value_total": settings.rfm.high_value_total,
        "engagement_days": settings.health.engagement_days,
        "tenure_days": settings.health.tenure_days,
        "engagement_target": settings.health.engagement_target,
    }


def _bounds(settings: ProfileSettings, stored: Boundaries | None) -> Boundaries | None:
    """The cut points to score against; None when the quintiles are not computed yet."""
    thresholds = settings.rfm.thresholds
    if settings.rfm.scoring == "thresholds" and thresholds is not None:
        return Boundaries(
            thresholds.recency_days,
            thresholds.frequency,
            thresholds.monetary_fen,
            stored.engagement_ref if stored else None,
        )
    return stored


async def _score(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    contacts: Sequence[uuid.UUID] | None,
    settings: ProfileSettings,
    stored: Boundaries | None,
    changes: Changes,
    now: datetime,
) -> None:
    bounds = _bounds(settings, stored)
    if bounds is None:
        bounds = await repository.compute_boundaries(
            session, tenant_id, settings.rfm.window_days, settings.health.engagement_days, now
        )
    for change in await repository.score(
        session, tenant_id, contacts, bounds, _settings(settings), now
    ):
        changes.add(tenant_id, change.contact_id, *(field_fact(name) for name in change.fields))


async def recompute(session: AsyncSession, changes: Changes, now: datetime) -> None:
    """Recompute RFM, value tier and health of the contacts whose facts changed."""
    tenants = changes.tenants()
    if not tenants:
        return
    settings = await tenant_settings(session, tenants)
    stored = await repository.stored_boundaries(session, tenants)
    for tenant_id in tenants:
        await _score(
            session,
            tenant_id,
            list(changes.contacts(tenant_id)),
            settings[tenant_id],
            stored.get(tenant_id),
            changes,
            now,
        )


async def rescore_tenants(session: AsyncSession, changes: Changes, now: datetime) -> int:
    """The periodic pass: each tenant's boundaries recomputed, then every live contact
    scored again (recency and the engagement window move with time); how many tenants."""
    tenants = await repository.tenants_with_profiles(session)
    settings = await tenant_settings(session, tenants)
    for tenant_id in tenants:
        tenant = settings[tenant_id]
        stored = await repository.compute_boundaries(
            session, tenant_id, tenant.rfm.window_days, tenant.health.engagement_days, now
        )
        await _score(session, tenant_id, None, tenant, stored, changes, now)
    return len(tenants)
