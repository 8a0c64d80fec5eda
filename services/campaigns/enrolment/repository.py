"""SQL of the enrolment part: one statement enrols any number of contacts."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, DateTime, Integer, String, Text, Uuid, func, literal, select
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, distinct_on, insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import Select

from services.campaigns.enrolment.models import CampaignEnrolment, CampaignEntry


def _no_context() -> Any:
    return literal({}, JSONB).label("context")


def listed(contact_ids: list[uuid.UUID], occurrence: str) -> Select[Any]:
    """Contacts given by id, all of one trigger occurrence, as an enrolment source."""
    return select(
        func.unnest(literal(contact_ids, ARRAY(Uuid))).label("contact_id"),
        literal(occurrence, String).label("occurrence"),
        _no_context(),
    )


def paired(
    contact_ids: list[uuid.UUID], occurrences: list[str], contexts: list[dict[str, Any]]
) -> Select[Any]:
    """Contacts each with its own trigger occurrence (an event's) and context, as a
    source (arrays of one length, unnested side by side)."""
    return select(
        func.unnest(literal(contact_ids, ARRAY(Uuid))).label("contact_id"),
        func.unnest(literal(occurrences, ARRAY(String))).label("occurrence"),
        func.unnest(literal(contexts, ARRAY(JSONB))).label("context"),
    )


def of_occurrence(contacts: Select[Any], occurrence: str) -> Select[Any]:
    """A query of `contact_id`s (a segment's members), all of one occurrence."""
    found = contacts.subquery()
    return select(
        found.c.contact_id, literal(occurrence, String).label("occurrence"), _no_context()
    )


async def enrol(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    campaign_id: int,
    version: int,
    entry_step: str,
    reentry: dict[str, Any],
    source: Select[Any],
    now: datetime,
    listens: list[str],
) -> int:
    """Enrol the source's (contact_id, occurrence) rows in one statement; returns how
    many enrolments were made. The re-entry policy is decided on `campaign_entries`,
    whose rows are taken in contact order (concurrent enrolments of a contact wait for
    each other and cannot deadlock); an enrolment's unique (campaign, contact,
    occurrence) makes a repeated trigger occurrence a no-op. Under `once` and
    `once_per_days` a contact enters at most once per statement (its first
    occurrence); under `every_time` once per occurrence."""
    policy = reentry["policy"]
    candidates = source.cte("candidates")
    contacts = select(candidates.c.contact_id).distinct().order_by(candidates.c.contact_id)
    entries = insert(CampaignEntry).from_select(
        ["campaign_id", "contact_id", "tenant_id", "last_entered_at"],
        select(
            literal(campaign_id, BigInteger),
            contacts.subquery().c.contact_id,
            literal(tenant_id, Uuid),
            literal(now, DateTime(timezone=True)),
        ),
    )
    keys = [CampaignEntry.campaign_id, CampaignEntry.contact_id]
    if policy == "once":
        gate = entries.on_conflict_do_nothing(index_elements=keys)
    else:
        gate = entries.on_conflict_do_update(
            index_elements=keys,
            set_={"last_entered_at": entries.excluded.last_entered_at},
            where=(
                None
                if policy == "every_time"
                else CampaignEntry.last_entered_at <= now - timedelta(days=int(reentry["days"]))
            ),
        )
    entered = gate.returning(CampaignEntry.contact_id).cte("entered")
    if policy == "every_time":
        # Every occurrence enters; the entries are only kept up to date.
        rows = select(candidates.c.contact_id, candidates.c.occurrence, candidates.c.context).where(
            candidates.c.contact_id.in_(select(entered.c.contact_id))
        )
    else:
        first = (
            select(candidates.c.contact_id, candidates.c.occurrence, candidates.c.context)
            .ext(distinct_on(candidates.c.contact_id))
            .order_by(candidates.c.contact_id, candidates.c.occurrence)
            .cte("first_occurrence")
        )
        occurrence = literal("once", String) if policy == "once" else first.c.occurrence
        rows = select(entered.c.contact_id, occurrence, first.c.context).join(
            first, first.c.contact_id == entered.c.contact_id
        )
    picked = rows.subquery()
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
                "step_since",
                "context",
                "listens",
            ],
            select(
                literal(tenant_id, Uuid),
                literal(campaign_id, BigInteger),
                literal(version, Integer),
                picked.c[0],
                picked.c[1],
                literal("active", String),
                literal(entry_step, String),
                literal(now, DateTime(timezone=True)),
                literal(now, DateTime(timezone=True)),
                literal(now, DateTime(timezone=True)),
                picked.c[2],
                literal(listens, ARRAY(Text)),
            ),
        )
        .on_conflict_do_nothing(index_elements=["campaign_id", "contact_id", "occurrence"])
        .returning(CampaignEnrolment.id)
        .cte("enrolled")
    )
    count = await session.scalar(select(func.count()).select_from(enrolled))
    return int(count or 0)
