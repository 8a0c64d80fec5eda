"""Every SQL statement of the read model's ingestion (profile.ingest): each takes the
whole batch of one tenant as arrays (unnest), so a batch costs a few statements
whatever its size."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

# Longest merge chain followed (a merged contact's survivor merged in turn...).
MAX_CHAIN = 32

_ENSURE_PROFILES = text(
    """
    INSERT INTO tagging_profiles (tenant_id, contact_id, created_at, stage_since, updated_at)
    SELECT :tenant, u.contact_id, u.created_at, :now, :now
      FROM unnest(CAST(:contacts AS uuid[]), CAST(:created AS timestamptz[]))
           AS u(contact_id, created_at)
    ON CONFLICT (tenant_id, contact_id) DO NOTHING
    RETURNING contact_id
    """
)


async def ensure_profiles(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    first_seen: dict[uuid.UUID, datetime],
    now: datetime,
) -> list[uuid.UUID]:
    """A profile for every contact of the batch; returns those that were new."""
    if not first_seen:
        return []
    result = await session.execute(
        _ENSURE_PROFILES,
        {
            "tenant": tenant_id,
            "contacts": list(first_seen),
            "created": list(first_seen.values()),
            "now": now,
        },
    )
    return list(result.scalars())


_RESOLVE = text(
    f"""
    WITH RECURSIVE chain(start, contact_id, status, merged_into, depth) AS (
        SELECT p.contact_id, p.contact_id, p.status, p.merged_into, 0
          FROM tagging_profiles p
         WHERE p.tenant_id = :tenant AND p.contact_id = ANY(CAST(:contacts AS uuid[]))
        UNION ALL
        SELECT c.start, p.contact_id, p.status, p.merged_into, c.depth + 1
          FROM chain c
          JOIN tagging_profiles p ON p.tenant_id = :tenant AND p.contact_id = c.merged_into
         WHERE c.status = 'merged' AND c.depth < {MAX_CHAIN}
    )
    SELECT DISTINCT ON (start) start, contact_id, status
      FROM chain ORDER BY start, depth DESC
    """
)


async def resolve_live(
    session: AsyncSession, tenant_id: uuid.UUID, contacts: Sequence[uuid.UUID]
) -> dict[uuid.UUID, uuid.UUID]:
    """Each contact's live profile: itself, or the survivor it was merged into (through
    chains). Erased contacts, and chains that end nowhere live, are left out."""
    if not contacts:
        return {}
    rows = await session.execute(_RESOLVE, {"tenant": tenant_id, "contacts": list(contacts)})
    return {row.start: row.contact_id for row in rows if row.status == "live"}


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


@dataclass
class ProfileEdit:
    """What a batch's contact events say about one profile (the last word of each)."""

    full: bool = False  # a contact.profile_changed: created_at, owner, channel, attributes
    created_at: datetime | None = None
    owner_staff: str | None = None
    channel: str | None = None
    attributes: dict[str, Any] | None = None
    # contact.added: the owner and channel when the profile has none.
    owner_default: str | None = None
    channel_default: str | None = None
    consent: dict[str, str] | None = None
    tier_set: bool = False
    points_tier: str | None = None
    # 0: unchanged, 1: followed again (cleared), 2: lost at lost_at for lost_reason.
    lost: int = 0
    lost_at: datetime | None = None
    lost_reason: str | None = None


_UPDATE_PROFILES = text(
    """
    WITH u AS (
        SELECT * FROM unnest(
            CAST(:contacts AS uuid[]), CAST(:full AS boolean[]),
            CAST(:created AS timestamptz[]), CAST(:owners AS text[]), CAST(:channels AS text[]),
            CAST(:attributes AS text[]), CAST(:owner_defaults AS text[]),
            CAST(:channel_defaults AS text[]), CAST(:consents AS text[]),
            CAST(:tier_set AS boolean[]), CAST(:tiers AS text[]), CAST(:lost AS int[]),
            CAST(:lost_at AS timestamptz[]), CAST(:lost_reasons AS text[])
        ) AS u(contact_id, full_, created_at, owner_staff, channel, attributes, owner_default,
               channel_default, consent, tier_set, points_tier, lost, lost_at, lost_reason)
    ), old AS (
        SELECT p.contact_id, p.created_at, p.owner_staff, p.channel, p.attributes, p.consent,
               p.points_tier
          FROM tagging_profiles p JOIN u USING (contact_id)
         WHERE p.tenant_id = :tenant AND p.status = 'live'
    )
    UPDATE tagging_profiles p SET
        created_at = CASE WHEN u.full_ THEN u.created_at ELSE p.created_at END,
        owner_staff = coalesce(CASE WHEN u.full_ THEN u.owner_staff ELSE p.owner_staff END,
                               u.owner_default),
        channel = coalesce(CASE WHEN u.full_ THEN u.channel ELSE p.channel END,
                           u.channel_default),
        attributes = CASE WHEN u.full_ THEN CAST(u.attributes AS jsonb) ELSE p.attributes END,
        consent = p.consent || coalesce(CAST(u.consent AS jsonb), '{}'::jsonb),
        points_tier = CASE WHEN u.tier_set THEN u.points_tier ELSE p.points_tier END,
        lost_at = CASE u.lost WHEN 1 THEN NULL WHEN 2 THEN u.lost_at ELSE p.lost_at END,
        lost_reason = CASE u.lost WHEN 1 THEN NULL WHEN 2 THEN u.lost_reason
                      ELSE p.lost_reason END,
        updated_at = :now
      FROM u JOIN old USING (contact_id)
     WHERE p.tenant_id = :tenant AND p.contact_id = u.contact_id
    RETURNING p.contact_id,
              p.created_at IS DISTINCT FROM old.created_at AS created_changed,
              p.owner_staff IS DISTINCT FROM old.owner_staff AS owner_changed,
              p.channel IS DISTINCT FROM old.channel AS channel_changed,
              p.attributes IS DISTINCT FROM old.attributes AS attributes_changed,
              p.consent IS DISTINCT FROM old.consent AS consent_changed,
              p.points_tier IS DISTINCT FROM old.points_tier AS tier_changed
    """
)


async def update_profiles(
    session: AsyncSession, tenant_id: uuid.UUID, edits: dict[uuid.UUID, ProfileEdit], now: datetime
) -> dict[uuid.UUID, list[str]]:
    """Apply the contact events' edits to live profiles; the fields that changed, per
    contact."""
    if not edits:
        return {}
    values = list(edits.values())
    rows = await session.execute(
        _UPDATE_PROFILES,
        {
            "tenant": tenant_id,
            "now": now,
            "contacts": list(edits),
            "full": [e.full for e in values],
            "created": [e.created_at for e in values],
            "owners": [e.owner_staff for e in values],
            "channels": [e.channel for e in values],
            "attributes": [json.dumps(e.attributes) if e.full else None for e in values],
            "owner_defaults": [e.owner_default for e in values],
            "channel_defaults": [e.channel_default for e in values],
            "consents": [json.dumps(e.consent) if e.consent else None for e in values],
            "tier_set": [e.tier_set for e in values],
            "tiers": [e.points_tier for e in values],
            "lost": [e.lost for e in values],
            "lost_at": [e.lost_at for e in values],
            "lost_reasons": [e.lost_reason for e in values],
        },
    )
    changed: dict[uuid.UUID, list[str]] = {}
    for row in rows:
        changed[row.contact_id] = [
            name
            for name, flag in (
                ("created_at", row.created_changed),
                ("owner_staff", row.owner_changed),
                ("channel", row.channel_changed),
                ("attributes", row.attributes_changed),
                ("consent", row.consent_changed),
                ("points_tier", row.tier_changed),
            )
            if flag
        ]
    return changed


_DISMISS_GROUPS = text(
    """
    DELETE FROM tagging_group_members
     WHERE tenant_id = :tenant AND chat_id = ANY(CAST(:chats AS text[]))
    RETURNING contact_id, chat_id
    """
)

_JOIN_GROUPS = text(
    """
    INSERT INTO tagging_group_members (tenant_id, chat_id, contact_id, joined_at)
    SELECT :tenant, u.chat_id, u.contact_id, u.joined_at
      FROM unnest(CAST(:chats AS text[]), CAST(:contacts AS uuid[]),
                  CAST(:joined AS timestamptz[])) AS u(chat_id, contact_id, joined_at)
    ON CONFLICT (tenant_id, chat_id, contact_id) DO NOTHING
    RETURNING contact_id, chat_id
    """
)

_LEAVE_GROUPS = text(
    """
    DELETE FROM tagging_group_members g
     USING unnest(CAST(:chats AS text[]), CAST(:contacts AS uuid[])) AS u(chat_id, contact_id)
     WHERE g.tenant_id = :tenant AND g.chat_id = u.chat_id AND g.contact_id = u.contact_id
    RETURNING g.contact_id, g.chat_id
    """
)


async def apply_group_changes(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    dismissed: Sequence[str],
    joins: Sequence[tuple[str, uuid.UUID, datetime]],
    leaves: Sequence[tuple[str, uuid.UUID]],
) -> list[tuple[uuid.UUID, str]]:
    """Dismissed groups lose every member, then joins and leaves; returns the
    (contact, chat) memberships that changed."""
    changed: list[tuple[uuid.UUID, str]] = []
    if dismissed:
        rows = await session.execute(_DISMISS_GROUPS, {"tenant": tenant_id, "chats": dismissed})
        changed += [(row.contact_id, row.chat_id) for row in rows]
    if joins:
        rows = await session.execute(
            _JOIN_GROUPS,
            {
                "tenant": tenant_id,
                "chats": [j[0] for j in joins],
                "contacts": [j[1] for j in joins],
                "joined": [j[2] for j in joins],
            },
        )
        changed += [(row.contact_id, row.chat_id) for row in rows]
    if leaves:
        rows = await session.execute(
            _LEAVE_GROUPS,
            {
                "tenant": tenant_id,
                "chats": [left[0] for left in leaves],
                "contacts": [left[1] for left in leaves],
            },
        )
        changed += [(row.contact_id, row.chat_id) for row in rows]
    return changed


@dataclass(frozen=True)
class NewEvent:
    """A business event to record (its contact already resolved to the live one)."""

    source_event_id: uuid.UUID
    contact_id: uuid.UUID
    event_type: str
    occurred_at: datetime
    properties: dict[str, Any]
    # Counts as an interaction (not consent changes, not refunds).
    interaction: bool
    # order.paid / order.refunded: the order and its amount (paid or refunded fen).
    order_id: str | None = None
    amount_fen: int = 0


# One statement: the events (once each), their counts on the tenant-local day, the
# orders they pay or refund, and the profile's order and interaction times.
_RECORD_EVENTS = text(
    """
    WITH u AS (
        SELECT u.*, (u.occurred_at AT TIME ZONE coalesce(t.timezone, 'Asia/Shanghai'))::date
                    AS day
          FROM unnest(CAST(:ids AS uuid[]), CAST(:contacts AS uuid[]), CAST(:types AS text[]),
                      CAST(:occurred AS timestamptz[]), CAST(:properties AS text[]),
                      CAST(:interaction AS boolean[]), CAST(:orders AS text[]),
                      CAST(:amounts AS bigint[]))
               AS u(source_event_id, contact_id, event_type, occurred_at, properties,
                    interaction, order_id, amount_fen)
          LEFT JOIN tenants t ON t.id = :tenant
    ), ins AS (
        INSERT INTO tagging_events
               (tenant_id, contact_id, event_type, occurred_at, day, properties, source_event_id)
        SELECT :tenant, contact_id, event_type, occurred_at, day, CAST(properties AS jsonb),
               source_event_id
          FROM u
        ON CONFLICT (source_event_id) DO NOTHING
        RETURNING source_event_id, contact_id, event_type, day
    ), fresh AS (
        SELECT u.* FROM u JOIN ins USING (source_event_id)
    ), days AS (
        INSERT INTO tagging_event_days (tenant_id, contact_id, event_type, day, n)
        SELECT :tenant, contact_id, event_type, day, count(*) FROM fresh
         GROUP BY contact_id, event_type, day
        ON CONFLICT (tenant_id, contact_id, event_type, day)
        DO UPDATE SET n = tagging_event_days.n + EXCLUDED.n
    ), orders AS (
        INSERT INTO tagging_orders
               (tenant_id, order_id, contact_id, paid_at, amount_fen, refunded_fen)
        SELECT :tenant, order_id, (array_agg(contact_id ORDER BY occurred_at))[1],
               min(occurred_at) FILTER (WHERE event_type = 'order.paid'),
               coalesce((array_agg(amount_fen ORDER BY occurred_at)
                         FILTER (WHERE event_type = 'order.paid'))[1], 0),
               coalesce(sum(amount_fen) FILTER (WHERE event_type = 'order.refunded'), 0)
          FROM fresh
         WHERE order_id IS NOT NULL AND event_type IN ('order.paid', 'order.refunded')
         GROUP BY order_id
        ON CONFLICT (tenant_id, order_id) DO UPDATE SET
            paid_at = coalesce(tagging_orders.paid_at, EXCLUDED.paid_at),
            amount_fen = CASE WHEN tagging_orders.paid_at IS NULL THEN EXCLUDED.amount_fen
                              ELSE tagging_orders.amount_fen END,
            refunded_fen = tagging_orders.refunded_fen + EXCLUDED.refunded_fen
    ), facts AS (
        SELECT contact_id,
               min(occurred_at) FILTER (WHERE event_type = 'order.paid') AS first_order,
               max(occurred_at) FILTER (WHERE event_type = 'order.paid') AS last_order,
               max(occurred_at) FILTER (WHERE interaction) AS last_interaction
          FROM fresh GROUP BY contact_id
    ), profiles AS (
        UPDATE tagging_profiles p
           SET first_order_at = least(p.first_order_at, f.first_order),
               last_order_at = greatest(p.last_order_at, f.last_order),
               last_interaction_at = greatest(p.last_interaction_at, f.last_interaction),
               updated_at = :now
          FROM facts f
         WHERE p.tenant_id = :tenant AND p.contact_id = f.contact_id
           AND (f.first_order IS NOT NULL OR f.last_interaction IS NOT NULL)
    )
    SELECT source_event_id, day FROM ins
    """
)


async def record_events(
    session: AsyncSession, tenant_id: uuid.UUID, events: Sequence[NewEvent], now: datetime
) -> dict[uuid.UUID, date]:
    """Record business events not recorded before, count them on their tenant-local day
    and follow the profile's order and interaction times; returns the newly recorded
    events' days by source event id."""
    if not events:
        return {}
    rows = await session.execute(
        _RECORD_EVENTS,
        {
            "tenant": tenant_id,
            "now": now,
            "ids": [e.source_event_id for e in events],
            "contacts": [e.contact_id for e in events],
            "types": [e.event_type for e in events],
            "occurred": [e.occurred_at for e in events],
            "properties": [json.dumps(e.properties) for e in events],
            "interaction": [e.interaction for e in events],
            "orders": [e.order_id for e in events],
            "amounts": [e.amount_fen for e in events],
        },
    )
    return {row.source_event_id: row.day for row in rows}


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


# -- settings ------------------------------------------------------------------------------


async def load_settings(
    session: AsyncSession, tenant_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, dict[str, Any]]:
    """The stored settings documents of the tenants that have one."""
    if not tenant_ids:
        return {}
    rows = await session.execute(
        text(
            "SELECT tenant_id, settings FROM tagging_settings "
            "WHERE tenant_id = ANY(CAST(:tenants AS uuid[]))"
        ),
        {"tenants": list(tenant_ids)},
    )
    return {row.tenant_id: dict(row.settings) for row in rows}


async def save_settings(
    session: AsyncSession, tenant_id: uuid.UUID, document: dict[str, Any], now: datetime
) -> None:
    await session.execute(
        text(
            """
            INSERT INTO tagging_settings (tenant_id, settings, updated_at)
            VALUES (:tenant, CAST(:settings AS jsonb), :now)
            ON CONFLICT (tenant_id) DO UPDATE
               SET settings = EXCLUDED.settings, updated_at = EXCLUDED.updated_at
            """
        ),
        {"tenant": tenant_id, "settings": json.dumps(document), "now": now},
    )


# -- lifecycle -----------------------------------------------------------------------------

# The stage of each profile from its facts at :now, what it next becomes due at with no
# new event, and since when it holds (a stage reached by the passage of time holds
# from the moment it was due, not from when it was noticed).
_RECOMPUTE_STAGES = text(
    """
    WITH cur AS (
        SELECT p.contact_id, p.lifecycle_stage AS old_stage, p.stage_since, p.stage_due_at,
               p.first_order_at, p.lost_at, p.lost_reason,
               greatest(p.last_interaction_at, p.last_order_at) AS last_active
          FROM tagging_profiles p
         WHERE p.tenant_id = :tenant AND p.contact_id = ANY(CAST(:contacts AS uuid[]))
           AND p.status = 'live'
    ), calc AS (
        SELECT cur.*, s.stage, s.reason, s.due, s.since
          FROM cur, LATERAL (
            SELECT * FROM (VALUES
                (cur.lost_reason = 'deleted_by_contact', 1, 'churned', 'deleted_by_contact',
                 NULL::timestamptz, least(:now, coalesce(cur.lost_at, :now))),
                (cur.first_order_at IS NULL, 2, 'potential', 'never_ordered',
                 NULL::timestamptz, CAST(:now AS timestamptz)),
                (cur.first_order_at > :now - make_interval(days => :new_days), 3, 'new',
                 'first_order', cur.first_order_at + make_interval(days => :new_days),
                 least(:now, cur.first_order_at)),
                (cur.last_active > :now - make_interval(days => :active_days), 4, 'active',
                 'recent_activity', cur.last_active + make_interval(days => :active_days),
                 least(:now, greatest(cur.last_active,
                                      cur.first_order_at + make_interval(days => :new_days)))),
                (cur.last_active > :now - make_interval(days => :churn_days), 5, 'silent',
                 'inactive', cur.last_active + make_interval(days => :churn_days),
                 least(:now, cur.last_active + make_interval(days => :active_days))),
                (true, 6, 'churned', 'inactive', NULL::timestamptz,
                 least(:now, coalesce(cur.last_active, :now)
                             + make_interval(days => :churn_days)))
            ) AS v(applies, rank, stage, reason, due, since)
            WHERE v.applies ORDER BY v.rank LIMIT 1
          ) s
    )
    UPDATE tagging_profiles p
       SET lifecycle_stage = calc.stage,
           stage_since = CASE WHEN calc.stage = calc.old_stage THEN p.stage_since
                              ELSE calc.since END,
           stage_due_at = calc.due,
           updated_at = :now
      FROM calc
     WHERE p.tenant_id = :tenant AND p.contact_id = calc.contact_id
       AND (calc.stage <> calc.old_stage OR calc.due IS DISTINCT FROM calc.stage_due_at)
    RETURNING p.contact_id, calc.old_stage, calc.stage, p.stage_since, calc.reason
    """
)


@dataclass(frozen=True)
class StageChange:
    contact_id: uuid.UUID
    from_stage: str
    to_stage: str
    since: datetime
    reason: str


async def recompute_stages(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    contacts: Sequence[uuid.UUID],
    thresholds: dict[str, int],
    now: datetime,
) -> list[StageChange]:
    """Recompute the stage (and when it is next due) of live profiles; the stage
    changes."""
    if not contacts:
        return []
    rows = await session.execute(
        _RECOMPUTE_STAGES,
        {"tenant": tenant_id, "contacts": list(contacts), "now": now, **thresholds},
    )
    return [
        StageChange(row.contact_id, row.old_stage, row.stage, row.stage_since, row.reason)
        for row in rows
        if row.old_stage != row.stage
    ]


_CLAIM_DUE_STAGES = text(
    """
    SELECT tenant_id, contact_id FROM tagging_profiles
     WHERE stage_due_at IS NOT NULL AND stage_due_at <= :now
     ORDER BY stage_due_at LIMIT :limit
       FOR UPDATE SKIP LOCKED
    """
)


async def claim_due_stages(
    session: AsyncSession, now: datetime, limit: int
) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """Profiles whose stage is due to change by now (through the partial index on
    stage_due_at), locked for this transaction; others' claims are skipped."""
    rows = await session.execute(_CLAIM_DUE_STAGES, {"now": now, "limit": limit})
    return [(row.tenant_id, row.contact_id) for row in rows]


# -- the profile endpoint ------------------------------------------------------------------


async def profile_row(
    session: AsyncSession, tenant_id: uuid.UUID, contact_id: uuid.UUID
) -> dict[str, Any] | None:
    row = (
        await session.execute(
            text("SELECT * FROM tagging_profiles WHERE tenant_id = :tenant AND contact_id = :c"),
            {"tenant": tenant_id, "c": contact_id},
        )
    ).first()
    return None if row is None else dict(row._mapping)


async def contact_tags(
    session: AsyncSession, tenant_id: uuid.UUID, contact_id: uuid.UUID, now: datetime
) -> list[dict[str, Any]]:
    """The contact's tags with their weights at `now` (those not yet dropped)."""
    rows = await session.execute(
        text(
            """
            SELECT ct.tag_id, t.group_id, t.name, g.name AS group_name, ct.source,
                   tag_weight(ct.weight, ct.weighted_at, ct.half_life_days, :now) AS weight
              FROM contact_tags ct
              JOIN tags t ON t.id = ct.tag_id
              JOIN tag_groups g ON g.id = t.group_id
             WHERE ct.tenant_id = :tenant AND ct.contact_id = :c
               AND (ct.drops_at IS NULL OR ct.drops_at > :now)
             ORDER BY g.name, t.name
            """
        ),
        {"tenant": tenant_id, "c": contact_id, "now": now},
    )
    return [dict(row._mapping) for row in rows]


async def contact_segments(
    session: AsyncSession, tenant_id: uuid.UUID, contact_id: uuid.UUID
) -> list[dict[str, Any]]:
    rows = await session.execute(
        text(
            """
            SELECT m.segment_id, s.name, m.entered_at
              FROM segment_members m JOIN segments s ON s.id = m.segment_id
             WHERE m.tenant_id = :tenant AND m.contact_id = :c AND s.tenant_id = :tenant
             ORDER BY s.name
            """
        ),
        {"tenant": tenant_id, "c": contact_id},
    )
    return [dict(row._mapping) for row in rows]
