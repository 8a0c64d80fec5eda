"""tagging service: Tags and weights, RFM, lifecycle stages, segments.

Other services read from it only through functions exported here, and
otherwise talk to it through events.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession
    from sqlalchemy.sql import Select

SERVICE = "tagging"


async def check_segment_rule(session: AsyncSession, tenant_id: uuid.UUID, rule: Any) -> None:
    """Nothing when `rule` is a segment rule over the tenant's own tags and segments;
    otherwise the 422 `invalid_rule` naming the failing path in the rule."""
    from services.tagging.segments.service import check_rule

    await check_rule(session, tenant_id, rule)


async def existing_tag_ids(
    session: AsyncSession, tenant_id: uuid.UUID, tag_ids: Sequence[int]
) -> set[int]:
    """Which of these tags the tenant has."""
    from services.tagging.segments import repository

    return await repository.existing_tags(session, tenant_id, tag_ids)


async def existing_segment_ids(
    session: AsyncSession, tenant_id: uuid.UUID, segment_ids: Sequence[int]
) -> set[int]:
    """Which of these segments the tenant has."""
    from services.tagging.segments import repository

    return await repository.existing_segments(session, tenant_id, segment_ids)


def segment_members(tenant_id: uuid.UUID, segment_id: int) -> Select[Any]:
    """The segment's members as a query of `contact_id`s, for another service's set-based
    statement (campaigns enrol a segment in one INSERT ... SELECT)."""
    from sqlalchemy import select

    from services.tagging.segments.models import SegmentMember

    return select(SegmentMember.contact_id.label("contact_id")).where(
        SegmentMember.tenant_id == tenant_id, SegmentMember.segment_id == segment_id
    )


async def rule_holds_for(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    rule: Any,
    contact_ids: Sequence[uuid.UUID],
    now: Any,
) -> set[uuid.UUID]:
    """Which of these contacts the segment rule holds for at `now` (one statement, on
    the tenant's clock): a journey's condition step."""
    from services.tagging.segments import repository, rules
    from services.tagging.segments.service import moment_for

    if not contact_ids:
        return set()
    node = rules.parse(rule)
    moment = await moment_for(session, tenant_id, now)
    query = repository.rule_members(
        tenant_id, node, moment, repository.ids_param(list(contact_ids))
    )
    return set((await session.scalars(query)).all())
