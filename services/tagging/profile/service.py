"""Rules of the profile part: the tenant's settings, and a contact's profile as the
tagging service knows it."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from services.tagging import clock
from services.tagging.profile import repository, stage_repository, view_repository
from services.tagging.profile.schemas import (
    CELL_NAMES,
    ContactProfile,
    ProfileSettings,
    RfmOut,
    SegmentOut,
    StageOut,
    TagOut,
)
from shared.errors import NotFound

log = logging.getLogger("scrm.tagging.profile")


async def tenant_settings(
    session: AsyncSession, tenant_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, ProfileSettings]:
    """Each tenant's settings (the defaults where it stored none): one query."""
    stored = await stage_repository.load_settings(session, tenant_ids)
    found: dict[uuid.UUID, ProfileSettings] = {}
    for tenant_id in tenant_ids:
        try:
            found[tenant_id] = ProfileSettings.model_validate(stored.get(tenant_id, {}))
        except ValidationError:
            # Only PUT writes the document, validated; never block a batch on it.
            log.exception("tagging: stored profile settings of tenant %s are invalid", tenant_id)
            found[tenant_id] = ProfileSettings()
    return found


async def get_settings(session: AsyncSession, tenant_id: uuid.UUID) -> ProfileSettings:
    return (await tenant_settings(session, [tenant_id]))[tenant_id]


async def save_settings(
    session: AsyncSession, tenant_id: uuid.UUID, settings: ProfileSettings
) -> ProfileSettings:
    """Replace the tenant's settings; stages and scores follow as contacts' facts change
    and with the periodic jobs."""
    await stage_repository.save_settings(
        session, tenant_id, settings.model_dump(mode="json"), clock.now()
    )
    return settings


async def contact_profile(
    session: AsyncSession, tenant_id: uuid.UUID, contact_id: uuid.UUID
) -> ContactProfile:
    """A live contact's profile. An erased contact is not found; a merged one neither,
    with the live survivor it was merged into in the details. A contact no event of
    which has reached the service yet has an empty profile (potential, no scores)."""
    row = await view_repository.profile_row(session, tenant_id, contact_id)
    if row is None:
        # A contact of the tenant (its scope was checked) no event of which has reached
        # the tagging service yet: what it would be without any.
        return _unseen(contact_id)
    if row["status"] == "erased":
        raise NotFound("the contact was erased", code="profile_erased")
    if row["status"] == "merged":
        survivor = (await repository.resolve_live(session, tenant_id, [contact_id])).get(contact_id)
        raise NotFound(
            "the contact was merged into another",
            code="profile_merged",
            details={"merged_into": str(survivor) if survivor else None},
        )
    now = clock.now()
    tags = await view_repository.contact_tags(session, tenant_id, contact_id, now)
    segments = await view_repository.contact_segments(session, tenant_id, contact_id)
    cell = row["rfm_cell"]
    return ContactProfile(
        contact_id=contact_id,
        created_at=row["created_at"],
        owner_staff=row["owner_staff"],
        channel=row["channel"],
        consent=dict(row["consent"]),
        attributes=dict(row["attributes"]),
        lifecycle=StageOut(
            stage=row["lifecycle_stage"], since=row["stage_since"], due_at=row["stage_due_at"]
        ),
        lost_at=row["lost_at"],
        lost_reason=row["lost_reason"],
        first_order_at=row["first_order_at"],
        last_order_at=row["last_order_at"],
        last_interaction_at=row["last_interaction_at"],
        points_tier=row["points_tier"],
        rfm=RfmOut(
            recency_days=row["recency_days"],
            frequency=row["frequency"],
            monetary_fen=row["monetary_fen"],
            r=row["r_score"],
            f=row["f_score"],
            m=row["m_score"],
            cell=cell,
            cell_name=CELL_NAMES.get(cell) if cell else None,
            value_tier=row["value_tier"],
            scored_at=row["scored_at"],
        ),
        health_score=row["health_score"],
        tags=[
            TagOut(
                tag_id=t["tag_id"],
                group_id=t["group_id"],
                name=t["name"],
                group=t["group_name"],
                weight=round(float(t["weight"]), 4),
                source=t["source"],
            )
            for t in tags
        ],
        segments=[
            SegmentOut(segment_id=s["segment_id"], name=s["name"], entered_at=s["entered_at"])
            for s in segments
        ],
    )


def _unseen(contact_id: uuid.UUID) -> ContactProfile:
    return ContactProfile(
        contact_id=contact_id,
        created_at=None,
        owner_staff=None,
        channel=None,
        consent={},
        attributes={},
        lifecycle=StageOut(stage="potential", since=None, due_at=None),
        lost_at=None,
        lost_reason=None,
        first_order_at=None,
        last_order_at=None,
        last_interaction_at=None,
        points_tier=None,
        rfm=RfmOut(
            recency_days=None,
            frequency=None,
            monetary_fen=None,
            r=None,
            f=None,
            m=None,
            cell=None,
            cell_name=None,
            value_tier=None,
            scored_at=None,
        ),
        health_score=None,
        tags=[],
        segments=[],
    )
