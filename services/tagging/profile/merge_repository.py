"""SQL of merges and erasure in the read model (profile.ingest): a batch's merged
contacts moved to their survivors, and erased contacts cleared, a few statements each."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

_MARK_MERGED = text(
    """
    UPDATE tagging_profiles p
       SET status = 'merged', merged_into = m.survivor, stage_due_at = NULL, updated_at = :now
      FROM unnest(CAST(:merged AS uuid[]), CAST(:survivors AS uuid[])) AS m(merged, survivor)
     WHERE p.tenant_id = :tenant AND p.contact_id = m.merged AND p.status = 'live'
    RETURNING p.contact_id
    """
)

_MOVE_DAYS = text(
    """
    WITH m AS (
        SELECT * FROM unnest(CAST(:merged AS uuid[]), CAST(:survivors AS uuid[]))
                      AS m(merged, survivor)
    ), moved AS (
        DELETE FROM tagging_event_days d USING m
         WHERE d.tenant_id = :tenant AND d.contact_id = m.merged
        RETURNING m.survivor, d.event_type, d.day, d.n
    )
    INSERT INTO tagging_event_days (tenant_id, contact_id, event_type, day, n)
    SELECT :tenant, survivor, event_type, day, sum(n) FROM moved
     GROUP BY survivor, event_type, day
    ON CONFLICT (tenant_id, contact_id, event_type, day)
    DO UPDATE SET n = tagging_event_days.n + EXCLUDED.n
    RETURNING contact_id, event_type
    """
)

_MOVE_EVENTS = text(
    """
    UPDATE tagging_events e SET contact_id = m.survivor
      FROM unnest(CAST(:merged AS uuid[]), CAST(:survivors AS uuid[])) AS m(merged, survivor)
     WHERE e.tenant_id = :tenant AND e.contact_id = m.merged
    """
)

_MOVE_ORDERS = text(
    """
    UPDATE tagging_orders o SET contact_id = m.survivor
      FROM unnest(CAST(:merged AS uuid[]), CAST(:survivors AS uuid[])) AS m(merged, survivor)
     WHERE o.tenant_id = :tenant AND o.contact_id = m.merged
    """
)

_MOVE_GROUPS = text(
    """
    WITH m AS (
        SELECT * FROM unnest(CAST(:merged AS uuid[]), CAST(:survivors AS uuid[]))
                      AS m(merged, survivor)
    ), moved AS (
        DELETE FROM tagging_group_members g USING m
         WHERE g.tenant_id = :tenant AND g.contact_id = m.merged
        RETURNING m.survivor, g.chat_id, g.joined_at
    )
    INSERT INTO tagging_group_members (tenant_id, chat_id, contact_id, joined_at)
    SELECT DISTINCT ON (survivor, chat_id) :tenant, chat_id, survivor, joined_at FROM moved
     ORDER BY survivor, chat_id, joined_at
    ON CONFLICT (tenant_id, chat_id, contact_id) DO NOTHING
    RETURNING contact_id, chat_id
    """
)

# The survivor keeps its own facts and gains what only the merged contact had.
_MERGE_FACTS = text(
    """
    WITH m AS (
        SELECT m.survivor,
               min(p.created_at) AS created_at,
               min(p.first_order_at) AS first_order_at,
               max(p.last_order_at) AS last_order_at,
               max(p.last_interaction_at) AS last_interaction_at,
               (array_agg(p.owner_staff) FILTER (WHERE p.owner_staff IS NOT NULL))[1] AS owner,
               (array_agg(p.channel) FILTER (WHERE p.channel IS NOT NULL))[1] AS channel,
               (array_agg(p.points_tier) FILTER (WHERE p.points_tier IS NOT NULL))[1] AS tier,
               coalesce(jsonb_object_agg(a.key, a.value) FILTER (WHERE a.key IS NOT NULL),
                        '{}'::jsonb) AS attributes,
               coalesce(jsonb_object_agg(c.key, c.value) FILTER (WHERE c.key IS NOT NULL),
                        '{}'::jsonb) AS consent
          FROM unnest(CAST(:merged AS uuid[]), CAST(:survivors AS uuid[])) AS m(merged, survivor)
          JOIN tagging_profiles p ON p.tenant_id = :tenant AND p.contact_id = m.merged
          LEFT JOIN LATERAL jsonb_each(p.attributes) a ON true
          LEFT JOIN LATERAL jsonb_each(p.consent) c ON true
         GROUP BY m.survivor
    )
    UPDATE tagging_profiles s
       SET created_at = least(s.created_at, m.created_at),
           first_order_at = least(s.first_order_at, m.first_order_at),
           last_order_at = greatest(s.last_order_at, m.last_order_at),
           last_interaction_at = greatest(s.last_interaction_at, m.last_interaction_at),
           owner_staff = coalesce(s.owner_staff, m.owner),
           channel = coalesce(s.channel, m.channel),
           points_tier = coalesce(s.points_tier, m.tier),
           attributes = m.attributes || s.attributes,
           consent = m.consent || s.consent,
           updated_at = :now
      FROM m
     WHERE s.tenant_id = :tenant AND s.contact_id = m.survivor
    """
)


@dataclass(frozen=True)
class MergeMoves:
    """What moved to each survivor: event types counted, customer groups."""

    merged: list[uuid.UUID]
    event_types: list[tuple[uuid.UUID, str]]
    groups: list[tuple[uuid.UUID, str]]


async def mark_merged(
    session: AsyncSession, tenant_id: uuid.UUID, merges: dict[uuid.UUID, uuid.UUID], now: datetime
) -> list[uuid.UUID]:
    """Mark live profiles merged into their survivors; returns those marked now (a
    profile already merged stays as it was: its history moved once)."""
    if not merges:
        return []
    result = await session.execute(
        _MARK_MERGED,
        {
            "tenant": tenant_id,
            "merged": list(merges),
            "survivors": list(merges.values()),
            "now": now,
        },
    )
    return list(result.scalars())


async def move_to_survivors(
    session: AsyncSession, tenant_id: uuid.UUID, moves: dict[uuid.UUID, uuid.UUID], now: datetime
) -> MergeMoves:
    """Move the merged contacts' counts, events, orders and group memberships to their
    live survivors (counts of one day summed), and fold their profile facts in."""
    params = {"tenant": tenant_id, "merged": list(moves), "survivors": list(moves.values())}
    days = (await session.execute(_MOVE_DAYS, params)).all()
    await session.execute(_MOVE_EVENTS, params)
    await session.execute(_MOVE_ORDERS, params)
    groups = (await session.execute(_MOVE_GROUPS, params)).all()
    await session.execute(_MERGE_FACTS, {**params, "now": now})
    return MergeMoves(
        list(moves),
        [(row.contact_id, row.event_type) for row in days],
        [(row.contact_id, row.chat_id) for row in groups],
    )


_ERASE_PROFILES = text(
    """
    UPDATE tagging_profiles
       SET status = 'erased', attributes = '{}'::jsonb, consent = '{}'::jsonb,
           owner_staff = NULL, channel = NULL, stage_due_at = NULL, updated_at = :now
     WHERE tenant_id = :tenant AND contact_id = ANY(CAST(:contacts AS uuid[]))
       AND status <> 'erased'
    RETURNING contact_id
    """
)

_ERASE_EVENT_PROPERTIES = text(
    """
    UPDATE tagging_events SET properties = '{}'::jsonb
     WHERE tenant_id = :tenant AND contact_id = ANY(CAST(:contacts AS uuid[]))
       AND properties <> '{}'::jsonb
    """
)

_ERASE_GROUPS = text(
    """
    DELETE FROM tagging_group_members
     WHERE tenant_id = :tenant AND contact_id = ANY(CAST(:contacts AS uuid[]))
    RETURNING contact_id, chat_id
    """
)


async def erase(
    session: AsyncSession, tenant_id: uuid.UUID, contacts: Sequence[uuid.UUID], now: datetime
) -> tuple[list[uuid.UUID], list[tuple[uuid.UUID, str]]]:
    """Erase profiles: personal facts cleared, event properties emptied, group
    memberships dropped (the counts stay: they are aggregates). Returns the profiles
    erased now and the memberships dropped."""
    if not contacts:
        return [], []
    params = {"tenant": tenant_id, "contacts": list(contacts), "now": now}
    erased = list((await session.execute(_ERASE_PROFILES, params)).scalars())
    await session.execute(_ERASE_EVENT_PROPERTIES, params)
    groups = [(row.contact_id, row.chat_id) for row in await session.execute(_ERASE_GROUPS, params)]
    return erased, groups
