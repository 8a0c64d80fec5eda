"""Lifecycle stages (SPEC §1): potential → new → active → silent → churned.

The stage follows from a profile's facts at a moment, with the tenant's thresholds
(profile settings, defaults 7 / 30 / 90 days), first rule that applies:

1. churned: the contact deleted the staff member (contact.lost, deleted_by_contact);
2. potential: known, never ordered;
3. new: the first order is under `new_days` old;
4. active: an interaction or order under `active_days` old;
5. silent: the last one under `churn_days` old;
6. churned: none for `churn_days` or more.

Each profile also stores `stage_due_at`, when its stage changes if nothing happens
(the first order ageing out of `new_days`, the last activity out of `active_days` or
`churn_days`): the sweep job reads only the profiles due, through a partial index.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from services.tagging.facts import Changes, field_fact
from services.tagging.profile import stage_repository
from services.tagging.profile.service import tenant_settings
from shared.events import publish_many

LIFECYCLE_CHANGED = "contact.lifecycle_changed"


async def recompute(session: AsyncSession, changes: Changes, now: datetime) -> None:
    """Recompute the stage of every changed contact; publish contact.lifecycle_changed."""
    tenants = changes.tenants()
    settings = await tenant_settings(session, tenants)
    published: list[tuple[uuid.UUID, dict[str, object]]] = []
    for tenant_id in tenants:
        lifecycle = settings[tenant_id].lifecycle
        moved = await stage_repository.recompute_stages(
            session,
            tenant_id,
            list(changes.contacts(tenant_id)),
            {
                "new_days": lifecycle.new_days,
                "active_days": lifecycle.active_days,
                "churn_days": lifecycle.churn_days,
            },
            now,
        )
        fact = field_fact("lifecycle_stage")
        for change in moved:
            changes.add(tenant_id, change.contact_id, fact)
            published.append(
                (
                    tenant_id,
                    {
                        "contact_id": str(change.contact_id),
                        "from": change.from_stage,
                        "to": change.to_stage,
                        "since": change.since.isoformat(),
                        "reason": change.reason,
                    },
                )
            )
    await publish_many(session, [(LIFECYCLE_CHANGED, item[1], item[0]) for item in published])
