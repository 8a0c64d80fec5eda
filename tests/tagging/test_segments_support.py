"""Read-model rows written the way the profile ingest writes them, for the segments tests:
profiles, tags on contacts, event counts by tenant-local day (and events with their
properties), customer-group memberships; and the facts each change records."""

from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.tagging.facts import Changes, event_fact, field_fact, group_fact, tag_fact
from services.tagging.profile.models import (
    TaggingEvent,
    TaggingEventDay,
    TaggingGroupMember,
    TaggingProfile,
)
from services.tagging.tags.models import ContactTag, Tag, TagGroup
from services.users.models import Contact

TZ = ZoneInfo("Asia/Shanghai")


def local_day(at: datetime) -> date:
    return at.astimezone(TZ).date()


async def make_tags(session: AsyncSession, tenant_id: uuid.UUID, n: int) -> list[int]:
    group = TagGroup(tenant_id=tenant_id, name=f"g-{uuid.uuid4().hex[:8]}", kind="interest")
    session.add(group)
    await session.flush()
    tags = [Tag(tenant_id=tenant_id, group_id=group.id, name=f"t{i}") for i in range(n)]
    session.add_all(tags)
    await session.flush()
    return [t.id for t in tags]


async def add_profile(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    *,
    created_at: datetime,
    contact_id: uuid.UUID | None = None,
    owner: str | None = None,
    changes: Changes | None = None,
    with_contact: bool = False,
    **fields: Any,
) -> uuid.UUID:
    """A live profile (and, with `with_contact`, the users service's contact, for routes
    that check the contact's scope)."""
    contact_id = contact_id or uuid.uuid4()
    if with_contact:
        session.add(Contact(id=contact_id, tenant_id=tenant_id, owner_staff_userid=owner))
        await session.flush()
    await session.execute(
        insert(TaggingProfile).values(
            tenant_id=tenant_id,
            contact_id=contact_id,
            created_at=created_at,
            owner_staff=owner,
            **fields,
        )
    )
    if changes is not None:
        changes.add(
            tenant_id,
            contact_id,
            field_fact("created_at"),
            field_fact("owner_staff"),
            *(field_fact(f) for f in fields if f in ("lifecycle_stage", "channel", "points_tier")),
            *(field_fact(f) for f in fields if f in ("attributes", "consent")),
        )
    return contact_id


async def set_fields(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    contact_id: uuid.UUID,
    changes: Changes | None = None,
    **fields: Any,
) -> None:
    await session.execute(
        update(TaggingProfile)
        .where(TaggingProfile.tenant_id == tenant_id, TaggingProfile.contact_id == contact_id)
        .values(**fields)
    )
    if changes is not None:
        changes.add(tenant_id, contact_id, *(field_fact(f) for f in fields if f != "status"))


async def set_tag(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    contact_id: uuid.UUID,
    tag_id: int,
    weight: float,
    at: datetime,
    half_life_days: float | None = None,
    changes: Changes | None = None,
) -> None:
    await session.execute(
        insert(ContactTag)
        .values(
            tenant_id=tenant_id,
            contact_id=contact_id,
            tag_id=tag_id,
            weight=weight,
            weighted_at=at,
            half_life_days=half_life_days,
            source="rule",
            first_raised_at=at,
            last_raised_at=at,
        )
        .on_conflict_do_update(
            index_elements=["tenant_id", "contact_id", "tag_id"],
            set_={"weight": weight, "weighted_at": at, "half_life_days": half_life_days},
        )
    )
    if changes is not None:
        changes.add(tenant_id, contact_id, tag_fact(tag_id))


async def drop_tag(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    contact_id: uuid.UUID,
    tag_id: int,
    changes: Changes | None = None,
) -> None:
    await session.execute(
        text("DELETE FROM contact_tags WHERE tenant_id = :t AND contact_id = :c AND tag_id = :tag"),
        {"t": tenant_id, "c": contact_id, "tag": tag_id},
    )
    if changes is not None:
        changes.add(tenant_id, contact_id, tag_fact(tag_id))


async def add_event(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    contact_id: uuid.UUID,
    event_type: str,
    occurred_at: datetime,
    properties: dict[str, Any] | None = None,
    changes: Changes | None = None,
) -> None:
    """One event: its row with properties and its count on the tenant-local day."""
    day = local_day(occurred_at)
    session.add(
        TaggingEvent(
            tenant_id=tenant_id,
            contact_id=contact_id,
            event_type=event_type,
            occurred_at=occurred_at,
            day=day,
            properties=properties or {},
            source_event_id=uuid.uuid4(),
        )
    )
    await session.flush()
    await session.execute(
        insert(TaggingEventDay)
        .values(tenant_id=tenant_id, contact_id=contact_id, event_type=event_type, day=day, n=1)
        .on_conflict_do_update(
            index_elements=["tenant_id", "contact_id", "event_type", "day"],
            set_={"n": TaggingEventDay.n + 1},
        )
    )
    if changes is not None:
        changes.add(tenant_id, contact_id, event_fact(event_type))


async def join_group(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    contact_id: uuid.UUID,
    chat_id: str,
    changes: Changes | None = None,
) -> None:
    await session.execute(
        insert(TaggingGroupMember)
        .values(tenant_id=tenant_id, chat_id=chat_id, contact_id=contact_id)
        .on_conflict_do_nothing()
    )
    if changes is not None:
        changes.add(tenant_id, contact_id, group_fact(chat_id))


async def leave_group(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    contact_id: uuid.UUID,
    chat_id: str,
    changes: Changes | None = None,
) -> None:
    await session.execute(
        text(
            "DELETE FROM tagging_group_members WHERE tenant_id = :t AND chat_id = :g "
            "AND contact_id = :c"
        ),
        {"t": tenant_id, "g": chat_id, "c": contact_id},
    )
    if changes is not None:
        changes.add(tenant_id, contact_id, group_fact(chat_id))


async def members_of(session: AsyncSession, segment_id: int) -> set[uuid.UUID]:
    rows = await session.execute(
        text("SELECT contact_id FROM segment_members WHERE segment_id = :s"), {"s": segment_id}
    )
    return {r[0] for r in rows}


async def segment_events(session: AsyncSession, segment_id: int) -> list[tuple[str, uuid.UUID]]:
    rows = await session.execute(
        text(
            "SELECT type, payload->>'contact_id' FROM outbox_events "
            "WHERE type LIKE 'segment.%' AND (payload->>'segment_id')::bigint = :s ORDER BY id"
        ),
        {"s": segment_id},
    )
    return [(r[0], uuid.UUID(r[1])) for r in rows]


def days(n: float) -> timedelta:
    return timedelta(days=n)
