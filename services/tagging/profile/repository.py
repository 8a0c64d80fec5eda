"""SQL of the read model's ingestion (profile.ingest): profiles, contact facts, group
memberships and business events. Each statement takes the whole batch of one tenant
as arrays (unnest), so a batch costs a few statements whatever its size. Merges and
erasure are in merge_repository.py, stages and settings in stage_repository.py,
scores in score_repository.py, the profile endpoint's reads in view_repository.py."""

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
