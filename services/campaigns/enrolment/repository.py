"""SQL of the enrolment part: one statement enrols any number of contacts."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, DateTime, Integer, String, Uuid, func, literal, select
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import Select

from services.campaigns.enrolment.models import CampaignEnrolment, CampaignEntry


def listed(contact_ids: list[uuid.UUID]) -> Select[Any]:
    """Contacts given by id, as an enrolment source."""
    return select(func.unnest(literal(contact_ids, ARRAY(Uuid))).label("contact_id"))


async def enrol(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    campaign_id: int,
    version: int,
    entry_step: str,
    reentry: dict[str, Any],
    occurrence: str,
    source: Select[Any],
    now: datetime,
) -> int:
    """Enrol the source's contacts (a query of `contact_id`s) in one statement; returns
    how many were enrolled. The re-entry policy is decided on `campaign_entries`, whose
    rows are taken in contact order (concurrent enrolments of a contact wait for each
    other and cannot deadlock); the enrolment's unique occurrence makes a repeated
    trigger occurrence a no-op."""
    policy = reentry["policy"]
    candidates = source.distinct().cte("candidates")
    entries = insert(CampaignEntry).from_select(
        ["campaign_id", "contact_id", "tenant_id", "last_entered_at"],
        select(
            literal(campaign_id, BigInteger),
            candidates.c.contact_id,
            literal(tenant_id, Uuid),
            literal(now, DateTime(timezone=True)),
        ).order_by(candidates.c.contact_id),
    )
    keys = [CampaignEntry.campaign_id, CampaignEntry.contact_id]
    if policy == "once":
        upsert = entries.on_conflict_do_nothing(index_elements=keys)
        occurrence = "once"
    else:
        upsert = entries.on_conflict_do_update(
            index_elements=keys,
            set_={"last_entered_at": entries.excluded.last_entered_at},
            where=(
                None
                if policy == "every_time"
                else CampaignEntry.last_entered_at <= now - timedelta(days=int(reentry["days"]))
            ),
        )
    entered = upsert.returning(CampaignEntry.contact_id).cte("entered")
    enrolled = (
        insert(CampaignEnrolment)
        .from_select(
            [
                "tenant_id",
                "campaign_id",
                "version",
                "contact_id",
                "occurrence",
                "status",
                "step_id",
                "due_at",
                "entered_at",
            ],
            select(
                literal(tenant_id, Uuid),
                literal(campaign_id, BigInteger),
                literal(version, Integer),
                entered.c.contact_id,
                literal(occurrence, String),
                literal("active", String),
                literal(entry_step, String),
                literal(now, DateTime(timezone=True)),
                literal(now, DateTime(timezone=True)),
            ),
        )
        .on_conflict_do_nothing(index_elements=["campaign_id", "contact_id", "occurrence"])
        .returning(CampaignEnrolment.id)
        .cte("enrolled")
    )
    count = await session.scalar(select(func.count()).select_from(enrolled))
    return int(count or 0)
