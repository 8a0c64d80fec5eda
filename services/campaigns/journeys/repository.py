"""SQL of the journeys part: campaigns and their versions."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.campaigns.enrolment.models import CampaignEnrolment as E
from services.campaigns.journeys.models import Campaign, CampaignVersion


async def insert_campaign(
    session: AsyncSession, tenant_id: uuid.UUID, name: str, trigger_type: str
) -> int | None:
    """The new campaign's id, or None when the tenant has one of that name."""
    found = await session.scalar(
        insert(Campaign)
        .values(tenant_id=tenant_id, name=name, trigger_type=trigger_type)
        .on_conflict_do_nothing(index_elements=["tenant_id", "name"])
        .returning(Campaign.id)
    )
    return None if found is None else int(found)


async def put_version(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    campaign_id: int,
    version: int,
    definition: dict[str, Any],
) -> None:
    """Store a version's definition (a draft's version 1 is replaced in place)."""
    statement = insert(CampaignVersion).values(
        campaign_id=campaign_id, version=version, tenant_id=tenant_id, definition=definition
    )
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=["campaign_id", "version"],
            set_={
                "definition": statement.excluded.definition,
                "created_at": statement.excluded.created_at,
            },
        )
    )


async def get_campaign(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    campaign_id: int,
    *,
    lock: bool = False,
    share: bool = False,
) -> Campaign | None:
    """The campaign; `lock`ed FOR UPDATE (a status change, an edit) or FOR SHARE
    (`share`: an enrolment, which a status change waits for)."""
    query = select(Campaign).where(Campaign.tenant_id == tenant_id, Campaign.id == campaign_id)
    if lock or share:
        query = query.with_for_update(read=share and not lock).execution_options(
            populate_existing=True
        )
    found: Campaign | None = await session.scalar(query)
    return found


async def get_version(
    session: AsyncSession, tenant_id: uuid.UUID, campaign_id: int, version: int
) -> CampaignVersion | None:
    found: CampaignVersion | None = await session.scalar(
        select(CampaignVersion).where(
            CampaignVersion.tenant_id == tenant_id,
            CampaignVersion.campaign_id == campaign_id,
            CampaignVersion.version == version,
        )
    )
    return found


async def list_versions(session: AsyncSession, campaign_id: int) -> list[tuple[int, datetime]]:
    rows = await session.execute(
        select(CampaignVersion.version, CampaignVersion.created_at)
        .where(CampaignVersion.campaign_id == campaign_id)
        .order_by(CampaignVersion.version)
    )
    return [(row[0], row[1]) for row in rows]


async def list_campaigns(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    after: int | None,
    limit: int,
    status: str | None,
) -> list[Campaign]:
    query = select(Campaign).where(Campaign.tenant_id == tenant_id)
    if status is not None:
        query = query.where(Campaign.status == status)
    if after is not None:
        query = query.where(Campaign.id > after)
    return list(await session.scalars(query.order_by(Campaign.id).limit(limit)))


async def name_taken(
    session: AsyncSession, tenant_id: uuid.UUID, name: str, other_than: int
) -> bool:
    found = await session.scalar(
        select(Campaign.id).where(
            Campaign.tenant_id == tenant_id, Campaign.name == name, Campaign.id != other_than
        )
    )
    return found is not None


async def set_fields(session: AsyncSession, campaign_id: int, **values: Any) -> None:
    await session.execute(update(Campaign).where(Campaign.id == campaign_id).values(**values))


async def delete_campaign(session: AsyncSession, campaign_id: int) -> None:
    await session.execute(delete(Campaign).where(Campaign.id == campaign_id))


async def end_enrolments(
    session: AsyncSession, campaign_id: int, reason: str, now: datetime
) -> int:
    """Every contact still in the campaign leaves it (one statement)."""
    result = await session.execute(
        update(E)
        .where(E.campaign_id == campaign_id, E.status.in_(("active", "waiting")))
        .values(status="exited", end_reason=reason, ended_at=now, listens=[])
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def live_triggered(
    session: AsyncSession, tenant_id: uuid.UUID, trigger_types: list[str]
) -> list[tuple[Campaign, dict[str, Any]]]:
    """The tenant's live campaigns with one of these triggers, with their current
    definitions, held FOR SHARE (a status change waits for the enrolment)."""
    rows = await session.execute(
        select(Campaign, CampaignVersion.definition)
        .join(
            CampaignVersion,
            (CampaignVersion.campaign_id == Campaign.id)
            & (CampaignVersion.version == Campaign.version),
        )
        .where(
            Campaign.tenant_id == tenant_id,
            Campaign.status == "live",
            Campaign.trigger_type.in_(trigger_types),
        )
        .order_by(Campaign.id)
        .with_for_update(read=True, of=Campaign)
    )
    return [(row[0], row[1]) for row in rows]


async def steps_in_use(
    session: AsyncSession, campaign_id: int, version: int, from_version: int | None
) -> set[str]:
    """The steps contacts of earlier versions (or of `from_version`) are at."""
    query = select(E.step_id).where(
        E.campaign_id == campaign_id,
        E.status.in_(("active", "waiting")),
        E.version < version,
    )
    if from_version is not None:
        query = query.where(E.version == from_version)
    return set(await session.scalars(query.distinct()))


async def migrate_enrolments(
    session: AsyncSession,
    campaign_id: int,
    version: int,
    from_version: int | None,
    mapping: dict[str, str],
    waiting_steps: set[str],
    goals: list[str],
    now: datetime,
) -> dict[str, int]:
    """One statement: the enrolments move to `version` at their mapped steps; those
    waiting keep waiting only where the new step is a wait too."""
    from sqlalchemy import text

    rows = await session.execute(
        text(
            """
            UPDATE campaign_enrolments e
               SET version = :version,
                   step_id = m.new_step,
                   status = CASE WHEN e.status = 'waiting' AND m.new_step = ANY(:waiting)
                                 THEN 'waiting' ELSE 'active' END,
                   due_at = CASE WHEN e.status = 'waiting' AND m.new_step = ANY(:waiting)
                                 THEN e.due_at ELSE CAST(:now AS timestamptz) END,
                   listens = CAST(:goals AS text[]),
                   step_since = CASE WHEN e.status = 'waiting' AND m.new_step = ANY(:waiting)
                                     THEN e.step_since ELSE CAST(:now AS timestamptz) END
              FROM unnest(CAST(:old AS text[]), CAST(:new AS text[])) AS m(old_step, new_step)
             WHERE e.campaign_id = :campaign AND e.status IN ('active', 'waiting')
               AND e.version < :version AND (CAST(:from_version AS int) IS NULL
                                             OR e.version = :from_version)
               AND e.step_id = m.old_step
            RETURNING e.step_id
            """
        ),
        {
            "version": version,
            "waiting": sorted(waiting_steps),
            "now": now,
            "goals": goals,
            "old": list(mapping),
            "new": [mapping[k] for k in mapping],
            "campaign": campaign_id,
            "from_version": from_version,
        },
    )
    moved: dict[str, int] = {}
    for (step,) in rows:
        moved[step] = moved.get(step, 0) + 1
    return moved
