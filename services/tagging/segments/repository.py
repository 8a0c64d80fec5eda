"""Every SQL statement of the segments part.

Membership changes are one statement each (`apply_difference`): the rule's
members (all the tenant's live profiles, or only given contacts), the members to
remove and to add, and their `segment.entered` / `segment.left` events written
to the outbox, as data-modifying CTEs of one INSERT ... SELECT.
"""

from __future__ import annotations

import typing
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    String,
    Table,
    Text,
    and_,
    any_,
    bindparam,
    column,
    delete,
    exists,
    func,
    literal,
    literal_column,
    select,
    text,
    true,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import Select
from sqlalchemy.sql.elements import BindParameter

from services.tagging.profile.models import (
    TaggingEvent,
    TaggingEventDay,
    TaggingGroupMember,
    TaggingProfile,
)
from services.tagging.segments import compiler, rules
from services.tagging.segments.models import Segment, SegmentMember
from services.tagging.tags.models import ContactTag, Tag
from shared import tenancy
from shared.events import NOTIFY_CHANNEL
from shared.models import OutboxEvent, Tenant

ENTERED = "segment.entered"
LEFT = "segment.left"

_profiles = typing.cast(Table, TaggingProfile.__table__)
_members = typing.cast(Table, SegmentMember.__table__)
_outbox = typing.cast(Table, OutboxEvent.__table__)


def ids_param(ids: Sequence[uuid.UUID]) -> BindParameter[Any]:
    return bindparam("ids", list(ids), type_=ARRAY(PG_UUID(as_uuid=True)))


def changed_contacts(bound: BindParameter[Any]) -> Any:
    """`unnest(:ids) AS changed(contact_id)`: joined to a table by its keys, the given
    contacts are looked up one by one, where `= ANY(:ids)` can be planned as a scan
    of the whole tenant (statistics of young tables, generic plans)."""
    return (
        func.unnest(bound)
        .table_valued(column("contact_id", PG_UUID(as_uuid=True)))
        .render_derived(name="changed")
    )


tenant_timezone = tenancy.tenant_timezone


# -- segments ------------------------------------------------------------------------------


async def get_segment(
    session: AsyncSession, tenant_id: uuid.UUID, segment_id: int, *, lock: bool = False
) -> Segment | None:
    query = select(Segment).where(Segment.tenant_id == tenant_id, Segment.id == segment_id)
    if lock:
        query = query.with_for_update(key_share=False, read=False)
    found: Segment | None = await session.scalar(query)
    return found


async def lock_for_build(session: AsyncSession, segment_id: int) -> Segment | None:
    """The segment, locked against live re-evaluation (which takes FOR SHARE) while
    its full build runs."""
    found: Segment | None = await session.scalar(
        select(Segment)
        .where(Segment.id == segment_id)
        .with_for_update(key_share=True)
        .execution_options(populate_existing=True)
    )
    return found


async def name_taken(
    session: AsyncSession, tenant_id: uuid.UUID, name: str, other_than: int | None = None
) -> bool:
    query = select(Segment.id).where(Segment.tenant_id == tenant_id, Segment.name == name)
    if other_than is not None:
        query = query.where(Segment.id != other_than)
    return await session.scalar(query) is not None


async def list_segments(
    session: AsyncSession, tenant_id: uuid.UUID, after: int | None, limit: int
) -> list[Segment]:
    query = select(Segment).where(Segment.tenant_id == tenant_id).order_by(Segment.id).limit(limit)
    if after is not None:
        query = query.where(Segment.id > after)
    return list(await session.scalars(query))


async def existing_tags(
    session: AsyncSession, tenant_id: uuid.UUID, tag_ids: Sequence[int]
) -> set[int]:
    if not tag_ids:
        return set()
    found = await session.scalars(
        select(Tag.id).where(Tag.tenant_id == tenant_id, Tag.id.in_(sorted(set(tag_ids))))
    )
    return set(found)


async def existing_segments(
    session: AsyncSession, tenant_id: uuid.UUID, segment_ids: Sequence[int]
) -> set[int]:
    if not segment_ids:
        return set()
    found = await session.scalars(
        select(Segment.id).where(
            Segment.tenant_id == tenant_id, Segment.id.in_(sorted(set(segment_ids)))
        )
    )
    return set(found)


async def segment_reads(session: AsyncSession, tenant_id: uuid.UUID) -> dict[int, list[str]]:
    """Every segment of the tenant and the facts it reads (for nesting and cycles)."""
    rows = await session.execute(
        select(Segment.id, Segment.reads).where(Segment.tenant_id == tenant_id)
    )
    return {row.id: list(row.reads) for row in rows}


async def nesting_segments(
    session: AsyncSession, tenant_id: uuid.UUID, segment_id: int
) -> list[int]:
    """The segments whose rule reads this one."""
    found = await session.scalars(
        select(Segment.id).where(
            Segment.tenant_id == tenant_id,
            Segment.reads.contains([f"segment:{segment_id}"]),
        )
    )
    return list(found)


async def segments_reading(
    session: AsyncSession, tenant_id: uuid.UUID, facts: Sequence[str]
) -> list[Segment]:
    """The tenant's dynamic segments reading any of the facts, locked FOR SHARE (a full
    build of one of them waits for this transaction, and it for the build)."""
    rows = await session.scalars(
        select(Segment)
        .where(
            Segment.tenant_id == tenant_id,
            Segment.kind == "dynamic",
            Segment.reads.overlap(list(facts)),
        )
        .order_by(Segment.id)
        .with_for_update(read=True)
    )
    return list(rows)


async def timed_segments(session: AsyncSession) -> list[tuple[Segment, str]]:
    """Ready dynamic segments with timed conditions, each with its tenant's time zone,
    locked for the sweep (those another sweep or build holds are skipped)."""
    rows = await session.execute(
        select(Segment, Tenant.timezone)
        .join(Tenant, Tenant.id == Segment.tenant_id)
        .where(Segment.timed, Segment.kind == "dynamic", Segment.status == "ready")
        .order_by(Segment.id)
        .with_for_update(of=Segment, key_share=True, skip_locked=True)
    )
    return [(row[0], row[1]) for row in rows]


async def count_live_profiles(session: AsyncSession, tenant_id: uuid.UUID, at_most: int) -> int:
    """The tenant's live profiles, counted up to `at_most` + 1."""
    capped = (
        select(literal(1))
        .where(_profiles.c.tenant_id == tenant_id, _profiles.c.status == "live")
        .limit(at_most + 1)
        .subquery()
    )
    return int(await session.scalar(select(func.count()).select_from(capped)) or 0)


async def mark_built(session: AsyncSession, segment_id: int, now: datetime) -> None:
    await session.execute(
        update(Segment)
        .where(Segment.id == segment_id)
        .values(status="ready", error=None, last_built_at=now, swept_at=now, updated_at=now)
    )


async def mark_failed(session: AsyncSession, segment_id: int, error: str, now: datetime) -> int:
    attempts = await session.scalar(
        update(Segment)
        .where(Segment.id == segment_id)
        .values(
            status="failed",
            error=error[:2000],
            build_attempts=Segment.build_attempts + 1,
            updated_at=now,
        )
        .returning(Segment.build_attempts)
    )
    return int(attempts or 0)


async def mark_swept(session: AsyncSession, segment_id: int, now: datetime) -> None:
    await session.execute(update(Segment).where(Segment.id == segment_id).values(swept_at=now))


async def set_timeouts(session: AsyncSession, lock_ms: int, statement_ms: int) -> None:
    await session.execute(
        text(
            "SELECT set_config('lock_timeout', :lock, true), "
            "set_config('statement_timeout', :stmt, true)"
        ),
        {"lock": f"{lock_ms}ms", "stmt": f"{statement_ms}ms"},
    )


# Per-contact work (a batch's changed contacts, at most a few thousand per statement) is
# always best done as lookups by key; a planner that misjudges a young table, or a
# segment's member count, would otherwise hash whole tables (every member of the segment,
# every profile of the tenant) for each batch.
# (Hash joins stay: of a batch's own rows, e.g. CTEs joined by contact, they are right.)
_LOOKUPS = text(
    "SELECT set_config('plan_cache_mode', 'force_custom_plan', true),"
    " set_config('enable_seqscan', 'off', true)"
)
_LOOKUPS_DONE = ("plan_cache_mode", "enable_seqscan")
_LOOKUPS_KEY = "tagging.lookups"


@asynccontextmanager
async def planned_as_lookups(session: AsyncSession) -> AsyncIterator[None]:
    """Statements inside are planned for their own parameters (never a generic plan,
    which knows neither how many contacts there are nor which windows) and as index
    lookups: no sequential scans of tables. Nested uses keep the outermost's."""
    if session.info.get(_LOOKUPS_KEY):
        yield
        return
    await session.execute(_LOOKUPS)
    session.info[_LOOKUPS_KEY] = True
    try:
        yield
    finally:
        session.info.pop(_LOOKUPS_KEY, None)
        if session.in_transaction():
            for name in _LOOKUPS_DONE:
                await session.execute(text(f"SET LOCAL {name} TO DEFAULT"))


async def tune_for_every_contact(session: AsyncSession, work_mem: str) -> None:
    """For the rest of the transaction: a statement over every contact of a tenant."""
    await session.execute(
        text("SELECT set_config('work_mem', :mem, true), set_config('jit', 'off', true)"),
        {"mem": work_mem},
    )


# -- membership ----------------------------------------------------------------------------


def rule_members(
    tenant_id: uuid.UUID,
    node: rules.Node,
    moment: compiler.Moment,
    ids: BindParameter[Any] | None = None,
    staff: str | None = None,
) -> Select[Any]:
    """The contact ids of the tenant's live profiles that the rule holds for (among `ids`,
    and owned by `staff`, when given)."""
    if ids is not None:
        # Each given contact's profile looked up by its key (LATERAL ... OFFSET 0 is
        # never flattened into a join): a young table's statistics, which can say the
        # tenant has a handful of profiles, cannot turn this into a scan of all of them.
        changed = changed_contacts(ids)
        profile = (
            select(_profiles)
            .where(
                _profiles.c.tenant_id == tenant_id,
                _profiles.c.contact_id == changed.c.contact_id,
                _profiles.c.status == "live",
            )
            .offset(0)
            .lateral("p")
        )
        query = (
            select(profile.c.contact_id)
            .select_from(changed.join(profile, true()))
            .where(compiler.condition(node, profile, tenant_id, moment, ids))
        )
        if staff is not None:
            query = query.where(profile.c.owner_staff == staff)
        return query
    p = _profiles.alias("p")
    query = select(p.c.contact_id).where(
        p.c.tenant_id == tenant_id,
        p.c.status == "live",
        compiler.condition(node, p, tenant_id, moment, ids),
    )
    if staff is not None:
        query = query.where(p.c.owner_staff == staff)
    return query


def _payload(segment_id: Any, contact: Any, now: datetime) -> Any:
    # The keys are this code's constants; the values are columns and bound parameters.
    return func.jsonb_build_object(
        literal_column("'segment_id'"),
        segment_id,
        literal_column("'contact_id'"),
        contact,
        literal_column("'occurred_at'"),
        literal(now.isoformat(), Text),
    )


def _publish(
    tenant_id: uuid.UUID,
    now: datetime,
    entered: Any | None,
    left: Any | None,
) -> Any:
    """INSERT INTO outbox_events ... SELECT: one entered/left event per row of the given
    CTEs (each with segment_id and contact_id columns)."""
    parts = []
    for kind, source in ((ENTERED, entered), (LEFT, left)):
        if source is None:
            continue
        parts.append(
            select(
                func.gen_random_uuid(),
                literal(tenant_id, PG_UUID(as_uuid=True)),
                literal(kind, String),
                _payload(source.c.segment_id, source.c.contact_id, now),
            ).select_from(source)
        )
    rows = union_all(*parts) if len(parts) > 1 else parts[0]
    return (
        insert(_outbox)
        .from_select(["event_id", "tenant_id", "type", "payload"], rows)
        .returning(
            _outbox.c.type,
            _outbox.c.payload["segment_id"].astext.label("segment_id"),
            _outbox.c.payload["contact_id"].astext.label("contact_id"),
        )
    )


async def apply_difference(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    segment_id: int,
    node: rules.Node,
    moment: compiler.Moment,
    ids: Sequence[uuid.UUID] | None = None,
    *,
    report_contacts: bool = True,
) -> list[tuple[str, uuid.UUID]] | dict[str, int]:
    """Make the segment's members those the rule holds for (among `ids`, when given),
    changing only the difference and publishing an event per change, in one statement.

    Returns the changes, [(segment.entered|segment.left, contact)], or with
    `report_contacts=False` (full builds) only how many of each."""
    m = _members
    bound = ids_param(ids) if ids is not None else None
    target = rule_members(tenant_id, node, moment, bound).cte("target")
    gone_query = delete(m).where(
        m.c.segment_id == segment_id,
        ~exists(
            select(literal(1)).select_from(target).where(target.c.contact_id == m.c.contact_id)
        ),
    )
    if bound is not None:
        changed = changed_contacts(bound)
        gone_query = gone_query.where(m.c.contact_id == changed.c.contact_id)
    gone = gone_query.returning(m.c.segment_id, m.c.contact_id).cte("gone")
    present = m.alias("present")
    new_rows = select(
        literal(segment_id, BigInteger),
        target.c.contact_id,
        literal(tenant_id, PG_UUID(as_uuid=True)),
        literal(moment.now, DateTime(timezone=True)),
    ).where(
        ~exists(
            select(literal(1))
            .select_from(present)
            .where(present.c.segment_id == segment_id, present.c.contact_id == target.c.contact_id)
        )
    )
    new = (
        insert(m)
        .from_select(["segment_id", "contact_id", "tenant_id", "entered_at"], new_rows)
        .on_conflict_do_nothing()
        .returning(m.c.segment_id, m.c.contact_id)
        .cte("new")
    )
    published = _publish(tenant_id, moment.now, new, gone).cte("published")
    if report_contacts:
        rows = (await session.execute(select(published.c.type, published.c.contact_id))).all()
        changes = [(row.type, uuid.UUID(row.contact_id)) for row in rows]
        if changes:
            await notify_relay(session)
        return changes
    counted = (
        await session.execute(select(published.c.type, func.count()).group_by(published.c.type))
    ).all()
    totals = {ENTERED: 0, LEFT: 0}
    totals.update({row[0]: int(row[1]) for row in counted})
    if totals[ENTERED] or totals[LEFT]:
        await notify_relay(session)
    return totals


async def remove_departed(
    session: AsyncSession, tenant_id: uuid.UUID, ids: Sequence[uuid.UUID], now: datetime
) -> list[tuple[int, uuid.UUID]]:
    """Contacts among `ids` that are no longer live (merged, erased) leave every segment,
    static ones included; returns the (segment, contact) pairs that left."""
    m = _members
    p = _profiles
    changed = changed_contacts(ids_param(ids))
    gone = (
        delete(m)
        .where(
            m.c.tenant_id == tenant_id,
            m.c.contact_id == changed.c.contact_id,
            ~exists(
                select(literal(1)).where(
                    p.c.tenant_id == tenant_id,
                    p.c.contact_id == m.c.contact_id,
                    p.c.status == "live",
                )
            ),
        )
        .returning(m.c.segment_id, m.c.contact_id)
        .cte("gone")
    )
    published = _publish(tenant_id, now, None, gone).cte("published")
    rows = (await session.execute(select(published.c.segment_id, published.c.contact_id))).all()
    if rows:
        await notify_relay(session)
    return [(int(row.segment_id), uuid.UUID(row.contact_id)) for row in rows]


async def add_listed(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    segment_id: int,
    ids: Sequence[uuid.UUID],
    now: datetime,
) -> list[uuid.UUID]:
    """Add live contacts to a static segment; returns those who entered."""
    m = _members
    p = _profiles
    bound = ids_param(ids)
    rows = select(
        literal(segment_id, BigInteger),
        p.c.contact_id,
        literal(tenant_id, PG_UUID(as_uuid=True)),
        literal(now, DateTime(timezone=True)),
    ).where(p.c.tenant_id == tenant_id, p.c.status == "live", p.c.contact_id == any_(bound))
    new = (
        insert(m)
        .from_select(["segment_id", "contact_id", "tenant_id", "entered_at"], rows)
        .on_conflict_do_nothing()
        .returning(m.c.segment_id, m.c.contact_id)
        .cte("new")
    )
    published = _publish(tenant_id, now, new, None).cte("published")
    found = (await session.execute(select(published.c.contact_id))).scalars().all()
    if found:
        await notify_relay(session)
    return [uuid.UUID(c) for c in found]


async def remove_listed(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    segment_id: int,
    ids: Sequence[uuid.UUID],
    now: datetime,
) -> list[uuid.UUID]:
    m = _members
    gone = (
        delete(m)
        .where(m.c.segment_id == segment_id, m.c.contact_id == any_(ids_param(ids)))
        .returning(m.c.segment_id, m.c.contact_id)
        .cte("gone")
    )
    published = _publish(tenant_id, now, None, gone).cte("published")
    found = (await session.execute(select(published.c.contact_id))).scalars().all()
    if found:
        await notify_relay(session)
    return [uuid.UUID(c) for c in found]


async def notify_relay(session: AsyncSession) -> None:
    await session.execute(text(f"NOTIFY {NOTIFY_CHANNEL}"))


async def live_profiles(
    session: AsyncSession, tenant_id: uuid.UUID, ids: Sequence[uuid.UUID]
) -> set[uuid.UUID]:
    if not ids:
        return set()
    p = _profiles
    found = await session.scalars(
        select(p.c.contact_id).where(
            p.c.tenant_id == tenant_id, p.c.status == "live", p.c.contact_id == any_(ids_param(ids))
        )
    )
    return set(found)


# -- reads ---------------------------------------------------------------------------------


def _staff_filter(query: Select[Any], staff: str | None) -> Select[Any]:
    if staff is None:
        return query
    p = _profiles
    return query.where(
        exists(
            select(literal(1)).where(
                p.c.tenant_id == _members.c.tenant_id,
                p.c.contact_id == _members.c.contact_id,
                p.c.owner_staff == staff,
            )
        )
    )


async def member_count(session: AsyncSession, segment_id: int, staff: str | None) -> int:
    query = select(func.count()).select_from(_members).where(_members.c.segment_id == segment_id)
    return int(await session.scalar(_staff_filter(query, staff)) or 0)


async def member_page(
    session: AsyncSession, segment_id: int, after: int | None, limit: int, staff: str | None
) -> list[tuple[int, uuid.UUID, datetime]]:
    m = _members
    query = (
        select(m.c.id, m.c.contact_id, m.c.entered_at)
        .where(m.c.segment_id == segment_id)
        .order_by(m.c.id)
        .limit(limit)
    )
    if after is not None:
        query = query.where(m.c.id > after)
    rows = await session.execute(_staff_filter(query, staff))
    return [(row.id, row.contact_id, row.entered_at) for row in rows]


async def stream_members(
    session: AsyncSession, segment_id: int, staff: str | None
) -> AsyncIterator[tuple[uuid.UUID, datetime]]:
    m = _members
    query = select(m.c.contact_id, m.c.entered_at).where(m.c.segment_id == segment_id)
    result = await session.stream(_staff_filter(query.order_by(m.c.id), staff))
    async for row in result:
        yield row.contact_id, row.entered_at


async def is_member(session: AsyncSession, segment_id: int, contact_id: uuid.UUID) -> bool:
    m = _members
    found = await session.scalar(
        select(literal(1)).where(m.c.segment_id == segment_id, m.c.contact_id == contact_id)
    )
    return found is not None


async def preview(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    node: rules.Node,
    moment: compiler.Moment,
    staff: str | None,
    sample_size: int,
) -> tuple[int, list[uuid.UUID]]:
    # The rule is evaluated once: the count and the sample read the same result.
    members = (
        rule_members(tenant_id, node, moment, staff=staff)
        .cte("members")
        .prefix_with("MATERIALIZED")
    )
    row = (
        await session.execute(
            select(
                select(func.count()).select_from(members).scalar_subquery(),
                func.array(select(members.c.contact_id).limit(sample_size).scalar_subquery()),
            )
        )
    ).one()
    return int(row[0]), list(row[1])


async def contact_facts(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    contact_id: uuid.UUID,
    node: rules.Node,
    moment: compiler.Moment,
) -> dict[str, Any] | None:
    """What the rule reads of one contact, as plain values (None: no profile)."""
    p = _profiles
    row = (
        (
            await session.execute(
                select(p).where(p.c.tenant_id == tenant_id, p.c.contact_id == contact_id)
            )
        )
        .mappings()
        .first()
    )
    if row is None:
        return None
    fields = {key: _plain(value) for key, value in row.items()}
    ct = ContactTag.__table__
    tags = {
        r.tag_id: float(r.weight)
        for r in await session.execute(
            select(
                ct.c.tag_id,
                func.tag_weight(
                    ct.c.weight, ct.c.weighted_at, ct.c.half_life_days, moment.now
                ).label("weight"),
            ).where(ct.c.tenant_id == tenant_id, ct.c.contact_id == contact_id)
        )
    }
    counts: dict[str, int] = {}
    for leaf in rules.leaves(node):
        if isinstance(leaf, rules.EventLeaf):
            counts[leaf.path] = await _event_count(session, tenant_id, contact_id, leaf, moment)
    gm = TaggingGroupMember.__table__
    groups = set(
        await session.scalars(
            select(gm.c.chat_id).where(gm.c.tenant_id == tenant_id, gm.c.contact_id == contact_id)
        )
    )
    m = _members
    segments = set(
        await session.scalars(
            select(m.c.segment_id).where(m.c.tenant_id == tenant_id, m.c.contact_id == contact_id)
        )
    )
    return {
        "fields": fields,
        "tags": tags,
        "counts": counts,
        "groups": groups,
        "segments": segments,
    }


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


async def _event_count(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    contact_id: uuid.UUID,
    leaf: rules.EventLeaf,
    moment: compiler.Moment,
) -> int:
    source: Any
    if leaf.where:
        source = TaggingEvent.__table__
        total: Any = func.count()
    else:
        source = TaggingEventDay.__table__
        total = func.coalesce(func.sum(source.c.n), 0)
    query = select(total).where(
        source.c.tenant_id == tenant_id,
        source.c.contact_id == contact_id,
        source.c.event_type == leaf.event_type,
    )
    if leaf.within_days is not None:
        query = query.where(source.c.day >= moment.window_start(leaf.within_days))
    for key, value in leaf.where:
        query = query.where(source.c.properties[key] == compiler.json_value(value))
    return int(await session.scalar(query) or 0)


# -- the sweep -----------------------------------------------------------------------------


async def contacts_with_days(
    session: AsyncSession, tenant_id: uuid.UUID, event_type: str, first: date, before: date
) -> set[uuid.UUID]:
    """Contacts with counts of the type on the days [first, before) (days that left a
    window), through the (tenant, event_type, day) index."""
    d = TaggingEventDay.__table__
    found = await session.scalars(
        select(d.c.contact_id)
        .where(
            d.c.tenant_id == tenant_id,
            d.c.event_type == event_type,
            d.c.day >= first,
            d.c.day < before,
        )
        .distinct()
    )
    return set(found)


async def contacts_created_between(
    session: AsyncSession, tenant_id: uuid.UUID, start: datetime, end: datetime
) -> set[uuid.UUID]:
    p = _profiles
    found = await session.scalars(
        select(p.c.contact_id).where(
            p.c.tenant_id == tenant_id, p.c.created_at >= start, p.c.created_at < end
        )
    )
    return set(found)


async def contacts_crossing_weight(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    tag_id: int,
    min_weight: float,
    since: datetime,
    now: datetime,
) -> set[uuid.UUID]:
    """Contacts whose decaying weight of the tag fell below `min_weight` in (since, now]."""
    ct = ContactTag.__table__

    def weight(at: datetime) -> Any:
        return func.tag_weight(ct.c.weight, ct.c.weighted_at, ct.c.half_life_days, at)

    found = await session.scalars(
        select(ct.c.contact_id).where(
            and_(
                ct.c.tenant_id == tenant_id,
                ct.c.tag_id == tag_id,
                ct.c.half_life_days.is_not(None),
                weight(since) >= min_weight,
                weight(now) < min_weight,
            )
        )
    )
    return set(found)
