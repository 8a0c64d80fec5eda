"""Every SQL statement of the tagging service's tags part.

Lock order: contact tags are locked in (contact_id, tag_id) order, in one statement
per call, so concurrent writers of the same tags take turns without deadlocking;
the drop sweep skips rows another transaction holds.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from shared.events import NOTIFY_CHANNEL


@dataclass(frozen=True)
class TagSettings:
    """What writing a tag needs to know of its group."""

    tag_id: int
    group_id: int
    half_life_days: float | None
    floor: float
    exclusive: bool
    decay_manual: bool


@dataclass(frozen=True)
class HeldTag:
    contact_id: uuid.UUID
    tag_id: int
    group_id: int
    current: float
    weighted_at: datetime
    half_life_days: float | None
    source: str
    first_raised_at: datetime
    last_raised_at: datetime


@dataclass(frozen=True)
class ContactTagRow:
    contact_id: uuid.UUID
    tag_id: int
    weight: float
    weighted_at: datetime
    half_life_days: float | None
    source: str
    first_raised_at: datetime
    last_raised_at: datetime
    drops_at: datetime | None


@dataclass(frozen=True)
class HistoryRow:
    contact_id: uuid.UUID
    tag_id: int
    action: str
    weight: float | None
    source: str
    cause: dict[str, Any]
    at: datetime


@dataclass(frozen=True)
class TagEventRow:
    """One tag.added / tag.removed / tag.weight_changed to publish."""

    kind: str  # added | removed | weight_changed
    contact_id: uuid.UUID
    tag_id: int
    group_id: int
    weight: float | None  # added: the weight; weight_changed: the new one
    from_weight: float | None
    source: str | None
    reason: str | None


# --- writes (writes.py) -------------------------------------------------------------

_TAG_SETTINGS = text(
    """
    SELECT t.id AS tag_id, t.group_id, g.half_life_days, g.floor, g.exclusive, g.decay_manual
      FROM tags t JOIN tag_groups g ON g.id = t.group_id
     WHERE t.tenant_id = :t AND t.id = ANY(CAST(:tags AS bigint[]))
    """
)


async def tag_settings(
    session: AsyncSession, tenant_id: uuid.UUID, tag_ids: Collection[int]
) -> dict[int, TagSettings]:
    rows = await session.execute(_TAG_SETTINGS, {"t": tenant_id, "tags": list(tag_ids)})
    return {row.tag_id: TagSettings(**row._mapping) for row in rows}


_LOCK_CONTACT_TAGS = text(
    """
    SELECT ct.contact_id, ct.tag_id, tg.group_id,
           tag_weight(ct.weight, ct.weighted_at, ct.half_life_days, :now) AS current,
           ct.weighted_at, ct.half_life_days, ct.source, ct.first_raised_at, ct.last_raised_at
      FROM contact_tags ct JOIN tags tg ON tg.id = ct.tag_id
     WHERE ct.tenant_id = :t
       AND ((ct.contact_id, ct.tag_id) IN (
                SELECT * FROM unnest(CAST(:contacts AS uuid[]), CAST(:tags AS bigint[])))
            OR (ct.contact_id, tg.group_id) IN (
                SELECT * FROM unnest(CAST(:xcontacts AS uuid[]), CAST(:xgroups AS bigint[]))))
     ORDER BY ct.contact_id, ct.tag_id
       FOR UPDATE OF ct
    """
)


async def lock_contact_tags(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    keys: Collection[tuple[uuid.UUID, int]],
    exclusive: Collection[tuple[uuid.UUID, int]],
    now: datetime,
) -> list[HeldTag]:
    """The contact tags of `keys`, and every tag the contacts hold in the exclusive
    groups of `exclusive` ((contact, group) pairs), locked, with current weights."""
    rows = await session.execute(
        _LOCK_CONTACT_TAGS,
        {
            "t": tenant_id,
            "now": now,
            "contacts": [c for c, _ in keys],
            "tags": [t for _, t in keys],
            "xcontacts": [c for c, _ in exclusive],
            "xgroups": [g for _, g in exclusive],
        },
    )
    return [HeldTag(**row._mapping) for row in rows]


def _row_arrays(rows: Sequence[ContactTagRow]) -> dict[str, Any]:
    return {
        "contacts": [r.contact_id for r in rows],
        "tags": [r.tag_id for r in rows],
        "weights": [r.weight for r in rows],
        "weighted": [r.weighted_at for r in rows],
        "halves": [r.half_life_days for r in rows],
        "sources": [r.source for r in rows],
        "firsts": [r.first_raised_at for r in rows],
        "lasts": [r.last_raised_at for r in rows],
        "drops": [r.drops_at for r in rows],
    }


_UNNEST_ROWS = """
    unnest(CAST(:contacts AS uuid[]), CAST(:tags AS bigint[]), CAST(:weights AS float8[]),
           CAST(:weighted AS timestamptz[]), CAST(:halves AS float8[]),
           CAST(:sources AS text[]), CAST(:firsts AS timestamptz[]),
           CAST(:lasts AS timestamptz[]), CAST(:drops AS timestamptz[]))
        AS u(contact_id, tag_id, weight, weighted_at, half_life_days, source,
             first_raised_at, last_raised_at, drops_at)
"""

_INSERT_CONTACT_TAGS = text(
    f"""
    INSERT INTO contact_tags (tenant_id, contact_id, tag_id, weight, weighted_at,
                              half_life_days, source, first_raised_at, last_raised_at, drops_at)
    SELECT :t, u.contact_id, u.tag_id, u.weight, u.weighted_at, u.half_life_days, u.source,
           u.first_raised_at, u.last_raised_at, u.drops_at
      FROM {_UNNEST_ROWS}
        ON CONFLICT ON CONSTRAINT pk_contact_tags DO NOTHING
    RETURNING 1
    """
)


async def insert_contact_tags(
    session: AsyncSession, tenant_id: uuid.UUID, rows: Sequence[ContactTagRow]
) -> bool:
    """Insert new contact tags; False (and nothing inserted) when another transaction
    added one of them meanwhile, so the caller plans again over the rows it then locks."""
    if not rows:
        return True
    savepoint = await session.begin_nested()
    inserted = len(
        (await session.execute(_INSERT_CONTACT_TAGS, {"t": tenant_id, **_row_arrays(rows)})).all()
    )
    if inserted == len(rows):
        await savepoint.commit()
        return True
    await savepoint.rollback()
    return False


_UPDATE_CONTACT_TAGS = text(
    f"""
    UPDATE contact_tags ct
       SET weight = u.weight, weighted_at = u.weighted_at, half_life_days = u.half_life_days,
           source = u.source, first_raised_at = u.first_raised_at,
           last_raised_at = u.last_raised_at, drops_at = u.drops_at
      FROM {_UNNEST_ROWS}
     WHERE ct.tenant_id = :t AND ct.contact_id = u.contact_id AND ct.tag_id = u.tag_id
    """
)


async def update_contact_tags(
    session: AsyncSession, tenant_id: uuid.UUID, rows: Sequence[ContactTagRow]
) -> None:
    if rows:
        await session.execute(_UPDATE_CONTACT_TAGS, {"t": tenant_id, **_row_arrays(rows)})


_DELETE_CONTACT_TAGS = text(
    """
    DELETE FROM contact_tags ct
     USING unnest(CAST(:contacts AS uuid[]), CAST(:tags AS bigint[])) AS u(contact_id, tag_id)
     WHERE ct.tenant_id = :t AND ct.contact_id = u.contact_id AND ct.tag_id = u.tag_id
    """
)


async def delete_contact_tags(
    session: AsyncSession, tenant_id: uuid.UUID, keys: Sequence[tuple[uuid.UUID, int]]
) -> None:
    if keys:
        await session.execute(
            _DELETE_CONTACT_TAGS,
            {"t": tenant_id, "contacts": [c for c, _ in keys], "tags": [t for _, t in keys]},
        )


_INSERT_HISTORY = text(
    """
    INSERT INTO contact_tag_history (tenant_id, contact_id, tag_id, action, weight, source,
                                     cause, at)
    SELECT :t, u.contact_id, u.tag_id, u.action, u.weight, u.source, u.cause::jsonb, u.at
      FROM unnest(CAST(:contacts AS uuid[]), CAST(:tags AS bigint[]), CAST(:actions AS text[]),
                  CAST(:weights AS float8[]), CAST(:sources AS text[]),
                  CAST(:causes AS text[]), CAST(:ats AS timestamptz[]))
           WITH ORDINALITY AS u(contact_id, tag_id, action, weight, source, cause, at, n)
     ORDER BY u.n
    """
)


async def insert_history(
    session: AsyncSession, tenant_id: uuid.UUID, rows: Sequence[HistoryRow]
) -> None:
    if rows:
        await session.execute(
            _INSERT_HISTORY,
            {
                "t": tenant_id,
                "contacts": [r.contact_id for r in rows],
                "tags": [r.tag_id for r in rows],
                "actions": [r.action for r in rows],
                "weights": [r.weight for r in rows],
                "sources": [r.source for r in rows],
                "causes": [json.dumps(r.cause, default=str) for r in rows],
                "ats": [r.at for r in rows],
            },
        )


# The payloads of the three tag events, from columns named as below (`e`).
_TAG_EVENT_TYPE = """
    CASE e.kind WHEN 'added' THEN 'tag.added' WHEN 'removed' THEN 'tag.removed'
                ELSE 'tag.weight_changed' END"""
_TAG_EVENT_PAYLOAD = """
    CASE e.kind
      WHEN 'added' THEN jsonb_build_object(
          'contact_id', e.contact_id, 'tag_id', e.tag_id, 'group_id', e.group_id,
          'weight', e.weight, 'source', e.source, 'occurred_at', CAST(:at AS text))
      WHEN 'removed' THEN jsonb_build_object(
          'contact_id', e.contact_id, 'tag_id', e.tag_id, 'group_id', e.group_id,
          'reason', e.reason, 'occurred_at', CAST(:at AS text))
      ELSE jsonb_build_object(
          'contact_id', e.contact_id, 'tag_id', e.tag_id, 'group_id', e.group_id,
          'from', e.from_weight, 'to', e.weight, 'source', e.source,
          'occurred_at', CAST(:at AS text))
    END"""

_PUBLISH_TAG_EVENTS = text(
    f"""
    INSERT INTO outbox_events (event_id, tenant_id, type, payload)
    SELECT gen_random_uuid(), :t, {_TAG_EVENT_TYPE}, {_TAG_EVENT_PAYLOAD}
      FROM unnest(CAST(:kinds AS text[]), CAST(:contacts AS uuid[]), CAST(:tags AS bigint[]),
                  CAST(:groups AS bigint[]), CAST(:weights AS float8[]),
                  CAST(:froms AS float8[]), CAST(:sources AS text[]), CAST(:reasons AS text[]))
           WITH ORDINALITY AS e(kind, contact_id, tag_id, group_id, weight, from_weight, source,
                                reason, n)
     ORDER BY e.n
    """
)

NOTIFY_RELAY = text(f"NOTIFY {NOTIFY_CHANNEL}")


async def publish_tag_events(
    session: AsyncSession, tenant_id: uuid.UUID, events: Sequence[TagEventRow], now: datetime
) -> None:
    """tag.added / tag.removed / tag.weight_changed into the outbox, in one statement."""
    if not events:
        return
    await session.execute(
        _PUBLISH_TAG_EVENTS,
        {
            "t": tenant_id,
            "at": now.isoformat(),
            "kinds": [e.kind for e in events],
            "contacts": [e.contact_id for e in events],
            "tags": [e.tag_id for e in events],
            "groups": [e.group_id for e in events],
            "weights": [e.weight for e in events],
            "froms": [e.from_weight for e in events],
            "sources": [e.source for e in events],
            "reasons": [e.reason for e in events],
        },
    )
    await session.execute(NOTIFY_RELAY)
