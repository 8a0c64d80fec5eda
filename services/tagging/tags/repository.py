"""Every SQL statement of the tagging service's tags part.

Lock order: contact tags are locked in (contact_id, tag_id) order, in one statement
per call, so concurrent writers of the same tags take turns without deadlocking;
the drop sweep skips rows another transaction holds.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
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
    cause: Mapping[str, Any]
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
       FOR KEY SHARE OF t
    """
)


async def tag_settings(
    session: AsyncSession, tenant_id: uuid.UUID, tag_ids: Collection[int]
) -> dict[int, TagSettings]:
    rows = await session.execute(_TAG_SETTINGS, {"t": tenant_id, "tags": list(tag_ids)})
    return {row.tag_id: TagSettings(**row._mapping) for row in rows}


# The keys asked for, and the contacts' tags in the exclusive groups asked for, each
# found through the primary key (tenant, contact, tag), then locked in key order.
_LOCK_CONTACT_TAGS = text(
    """
    WITH wanted AS (
        SELECT u.contact_id, u.tag_id
          FROM unnest(CAST(:contacts AS uuid[]), CAST(:tags AS bigint[])) AS u(contact_id, tag_id)
        UNION
        SELECT ct.contact_id, ct.tag_id
          FROM unnest(CAST(:xcontacts AS uuid[]), CAST(:xgroups AS bigint[]))
               AS x(contact_id, group_id)
          JOIN contact_tags ct ON ct.tenant_id = :t AND ct.contact_id = x.contact_id
          JOIN tags tg ON tg.id = ct.tag_id AND tg.group_id = x.group_id
    )
    SELECT ct.contact_id, ct.tag_id, tg.group_id,
           tag_weight(ct.weight, ct.weighted_at, ct.half_life_days, :now) AS current,
           ct.weighted_at, ct.half_life_days, ct.source, ct.first_raised_at, ct.last_raised_at
      FROM wanted w
      JOIN contact_tags ct
        ON ct.tenant_id = :t AND ct.contact_id = w.contact_id AND ct.tag_id = w.tag_id
      JOIN tags tg ON tg.id = ct.tag_id
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


_UPSERT_CONTACT_TAGS = text(
    f"""
    INSERT INTO contact_tags (tenant_id, contact_id, tag_id, weight, weighted_at,
                              half_life_days, source, first_raised_at, last_raised_at, drops_at)
    SELECT :t, u.contact_id, u.tag_id, u.weight, u.weighted_at, u.half_life_days, u.source,
           u.first_raised_at, u.last_raised_at, u.drops_at
      FROM {_UNNEST_ROWS}
        ON CONFLICT ON CONSTRAINT pk_contact_tags DO UPDATE
       SET weight = excluded.weight, weighted_at = excluded.weighted_at,
           half_life_days = excluded.half_life_days, source = excluded.source,
           first_raised_at = LEAST(contact_tags.first_raised_at, excluded.first_raised_at),
           last_raised_at = GREATEST(contact_tags.last_raised_at, excluded.last_raised_at),
           drops_at = excluded.drops_at
     WHERE tag_weight(excluded.weight, excluded.weighted_at, excluded.half_life_days, :now)
         > tag_weight(contact_tags.weight, contact_tags.weighted_at,
                      contact_tags.half_life_days, :now)
    """
)


async def upsert_contact_tags(
    session: AsyncSession, tenant_id: uuid.UUID, rows: Sequence[ContactTagRow], now: datetime
) -> None:
    """Insert contact tags; one a contact holds already keeps the higher current weight."""
    if rows:
        await session.execute(
            _UPSERT_CONTACT_TAGS, {"t": tenant_id, "now": now, **_row_arrays(rows)}
        )


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


def _encoded_causes(rows: Sequence[HistoryRow]) -> list[str]:
    # Writes of one call mostly share a cause (a bulk request, a rule's event): encode
    # each distinct one once.
    encoded: dict[int, str] = {}
    found: list[str] = []
    for row in rows:
        key = id(row.cause)
        if key not in encoded:
            encoded[key] = json.dumps(dict(row.cause), default=str) if row.cause else "{}"
        found.append(encoded[key])
    return found


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
                "causes": _encoded_causes(rows),
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


async def notify_relay(session: AsyncSession) -> None:
    """Wake the relay when the transaction commits: once per transaction, as
    shared.events.publish does (Postgres folds repeats, but each costs a round trip)."""
    transaction = session.get_transaction()
    if transaction is not None and session.info.get("outbox_notified") is transaction:
        return
    await session.execute(NOTIFY_RELAY)
    session.info["outbox_notified"] = transaction


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
    await notify_relay(session)


# --- removals by the database's own rules (decay, deleted tags, merges, erasure) ----
# One statement: delete the rows, write their history, publish tag.removed.
def _removal(selection: str) -> str:
    return f"""
    WITH chosen AS ({selection}),
    gone AS (
        DELETE FROM contact_tags ct
         USING chosen c
         WHERE ct.tenant_id = c.tenant_id AND ct.contact_id = c.contact_id
           AND ct.tag_id = c.tag_id
        RETURNING ct.tenant_id, ct.contact_id, ct.tag_id, ct.source,
                  tag_weight(ct.weight, ct.weighted_at, ct.half_life_days, :now) AS weight
    ),
    history AS (
        INSERT INTO contact_tag_history (tenant_id, contact_id, tag_id, action, weight,
                                         source, cause, at)
        SELECT tenant_id, contact_id, tag_id, 'removed', weight, source,
               jsonb_build_object('reason', CAST(:reason AS text)), :now
          FROM gone
    ),
    published AS (
        INSERT INTO outbox_events (event_id, tenant_id, type, payload)
        SELECT gen_random_uuid(), g.tenant_id, 'tag.removed',
               jsonb_build_object('contact_id', g.contact_id, 'tag_id', g.tag_id,
                                  'group_id', t.group_id, 'reason', CAST(:reason AS text),
                                  'occurred_at', CAST(:at AS text))
          FROM gone g JOIN tags t ON t.id = g.tag_id
    )
    SELECT tenant_id, contact_id, tag_id FROM gone
    """


# Due rows through ix_contact_tags_drops; rows another sweep (or a writer) holds are
# left to it.
_SWEEP_DUE = text(
    _removal(
        """SELECT tenant_id, contact_id, tag_id FROM contact_tags
            WHERE drops_at <= :now ORDER BY drops_at LIMIT :limit
              FOR UPDATE SKIP LOCKED"""
    )
)
_REMOVE_TAG_HOLDERS = text(
    _removal(
        """SELECT tenant_id, contact_id, tag_id FROM contact_tags
            WHERE tenant_id = :t AND tag_id = ANY(CAST(:tags AS bigint[]))"""
    )
)


async def sweep_decayed(
    session: AsyncSession, now: datetime, limit: int
) -> list[tuple[uuid.UUID, uuid.UUID, int]]:
    """Remove up to `limit` contact tags whose decayed weight fell below the floor by
    `now`; (tenant, contact, tag) of each."""
    rows = await session.execute(
        _SWEEP_DUE, {"now": now, "at": now.isoformat(), "limit": limit, "reason": "decayed"}
    )
    found = [(r.tenant_id, r.contact_id, r.tag_id) for r in rows]
    if found:
        await notify_relay(session)
    return found


async def remove_tag_holders(
    session: AsyncSession, tenant_id: uuid.UUID, tag_ids: Sequence[int], now: datetime
) -> list[tuple[uuid.UUID, int]]:
    """Remove the tags from every contact holding them (tag.removed reason "deleted")."""
    rows = await session.execute(
        _REMOVE_TAG_HOLDERS,
        {
            "t": tenant_id,
            "tags": list(tag_ids),
            "now": now,
            "at": now.isoformat(),
            "reason": "deleted",
        },
    )
    found = [(r.contact_id, r.tag_id) for r in rows]
    if found:
        await notify_relay(session)
    return found


@dataclass(frozen=True)
class StoredTag:
    """A contact tag as stored, with its current weight and its group's rules."""

    contact_id: uuid.UUID
    tag_id: int
    group_id: int
    exclusive: bool
    weight: float
    current: float
    weighted_at: datetime
    half_life_days: float | None
    source: str
    first_raised_at: datetime
    last_raised_at: datetime
    drops_at: datetime | None


_LOCK_CONTACTS_TAGS = text(
    """
    SELECT ct.contact_id, ct.tag_id, t.group_id, g.exclusive, ct.weight,
           tag_weight(ct.weight, ct.weighted_at, ct.half_life_days, :now) AS current,
           ct.weighted_at, ct.half_life_days, ct.source, ct.first_raised_at,
           ct.last_raised_at, ct.drops_at
      FROM contact_tags ct
      JOIN tags t ON t.id = ct.tag_id
      JOIN tag_groups g ON g.id = t.group_id
     WHERE ct.tenant_id = :t AND ct.contact_id = ANY(CAST(:contacts AS uuid[]))
     ORDER BY ct.contact_id, ct.tag_id
       FOR UPDATE OF ct
    """
)


async def lock_contacts_tags(
    session: AsyncSession, tenant_id: uuid.UUID, contact_ids: Collection[uuid.UUID], now: datetime
) -> list[StoredTag]:
    """Every tag the contacts hold, locked."""
    rows = await session.execute(
        _LOCK_CONTACTS_TAGS, {"t": tenant_id, "contacts": list(contact_ids), "now": now}
    )
    return [StoredTag(**row._mapping) for row in rows]


# --- tag groups -----------------------------------------------------------------------

_GROUP_COLUMNS = """g.id, g.name, g.kind, g.half_life_days, g.floor, g.exclusive, g.decay_manual,
    g.mirror_to_wecom, g.wecom_group_id, g.created_at, g.updated_at,
    (SELECT count(*) FROM tags t WHERE t.group_id = g.id) AS tag_count"""


async def insert_group(
    session: AsyncSession, tenant_id: uuid.UUID, values: dict[str, Any]
) -> int | None:
    """The new group's id; None when the tenant has a group of that name."""
    found = await session.scalar(
        text(
            """
            INSERT INTO tag_groups (tenant_id, name, kind, half_life_days, floor, exclusive,
                                    decay_manual, mirror_to_wecom)
            VALUES (:t, :name, :kind, :half_life_days, :floor, :exclusive, :decay_manual,
                    :mirror_to_wecom)
            ON CONFLICT ON CONSTRAINT uq_tag_groups_name DO NOTHING
            RETURNING id
            """
        ),
        {"t": tenant_id, **values},
    )
    return None if found is None else int(found)


async def list_groups(session: AsyncSession, tenant_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = await session.execute(
        text(f"SELECT {_GROUP_COLUMNS} FROM tag_groups g WHERE g.tenant_id = :t ORDER BY g.id"),
        {"t": tenant_id},
    )
    return [dict(r._mapping) for r in rows]


LockMode = Literal["", "FOR UPDATE", "FOR NO KEY UPDATE", "FOR KEY SHARE"]


async def get_group(
    session: AsyncSession, tenant_id: uuid.UUID, group_id: int, *, lock: LockMode = ""
) -> dict[str, Any] | None:
    sql = f"SELECT {_GROUP_COLUMNS} FROM tag_groups g WHERE g.tenant_id = :t AND g.id = :id"
    row = (await session.execute(text(f"{sql} {lock}"), {"t": tenant_id, "id": group_id})).first()
    return None if row is None else dict(row._mapping)


_GROUP_FIELDS = (
    "name",
    "kind",
    "half_life_days",
    "floor",
    "exclusive",
    "decay_manual",
    "mirror_to_wecom",
)


async def update_group(
    session: AsyncSession, tenant_id: uuid.UUID, group_id: int, values: dict[str, Any]
) -> bool:
    """Store the changed fields; False when the new name is another group's."""
    assignments = ", ".join(f"{name} = :{name}" for name in values if name in _GROUP_FIELDS)
    return await _unless_taken(
        session,
        text(
            f"UPDATE tag_groups SET {assignments}, updated_at = now()"
            " WHERE tenant_id = :t AND id = :id"
        ),
        {"t": tenant_id, "id": group_id, **{k: v for k, v in values.items() if k in _GROUP_FIELDS}},
        "uq_tag_groups_name",
    )


async def _unless_taken(
    session: AsyncSession, statement: Any, params: dict[str, Any], constraint: str
) -> bool:
    """Run a statement that may break a unique name; False (and nothing changed) if it does."""
    try:
        async with session.begin_nested():
            await session.execute(statement, params)
    except IntegrityError as error:
        if constraint not in str(error.orig):
            raise
        return False
    return True


# The group's contact tags re-anchored at :now: their current weight becomes the stored
# one, decaying from now on at the group's new half-life (a manual tag only with
# decay_manual), and dropping when that reaches the new floor.
_REANCHOR_GROUP = text(
    """
    WITH anchored AS (
        SELECT ct.contact_id, ct.tag_id,
               tag_weight(ct.weight, ct.weighted_at, ct.half_life_days, :now) AS weight,
               CASE WHEN ct.source = 'manual' AND NOT CAST(:decay_manual AS boolean) THEN NULL
                    ELSE CAST(:half_life AS float8) END AS half_life_days
          FROM contact_tags ct JOIN tags t ON t.id = ct.tag_id
         WHERE ct.tenant_id = :t AND t.group_id = :g
         ORDER BY ct.contact_id, ct.tag_id
           FOR UPDATE OF ct
    )
    UPDATE contact_tags ct
       SET weight = a.weight, weighted_at = :now, half_life_days = a.half_life_days,
           drops_at = CASE
               WHEN a.half_life_days IS NULL OR CAST(:floor AS float8) <= 0 THEN NULL
               WHEN a.weight < :floor THEN :now
               ELSE :now + make_interval(
                   secs => a.half_life_days * 86400.0 * ln(a.weight / :floor) / ln(2.0))
           END
      FROM anchored a
     WHERE ct.tenant_id = :t AND ct.contact_id = a.contact_id AND ct.tag_id = a.tag_id
    """
)


async def reanchor_group(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    group_id: int,
    *,
    half_life_days: float | None,
    floor: float,
    decay_manual: bool,
    now: datetime,
) -> int:
    """Apply a group's new decay settings to the tags its contacts hold; how many."""
    result = await session.execute(
        _REANCHOR_GROUP,
        {
            "t": tenant_id,
            "g": group_id,
            "now": now,
            "half_life": half_life_days,
            "floor": floor,
            "decay_manual": decay_manual,
        },
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


async def group_tag_ids(session: AsyncSession, tenant_id: uuid.UUID, group_id: int) -> list[int]:
    rows = await session.scalars(
        # Locked: writers of these tags (FOR KEY SHARE) finish first, later ones find none.
        text("SELECT id FROM tags WHERE tenant_id = :t AND group_id = :g ORDER BY id FOR UPDATE"),
        {"t": tenant_id, "g": group_id},
    )
    return [int(r) for r in rows]


async def delete_group(session: AsyncSession, tenant_id: uuid.UUID, group_id: int) -> None:
    await session.execute(
        text("DELETE FROM tag_groups WHERE tenant_id = :t AND id = :id"),
        {"t": tenant_id, "id": group_id},
    )


# --- tags -----------------------------------------------------------------------------

_TAG_COLUMNS = """t.id, t.group_id, g.name AS "group", t.name, t.wecom_tag_id, t.created_at,
    t.updated_at"""


async def count_tags_locked(session: AsyncSession, tenant_id: uuid.UUID) -> int:
    """The tenant's tag count, with new tags of the tenant held back until commit (so two
    requests cannot both take the last place)."""
    await session.execute(
        text(
            "SELECT pg_advisory_xact_lock("
            "hashtextextended('tags:' || CAST(CAST(:t AS uuid) AS text), 0))"
        ),
        {"t": tenant_id},
    )
    return int(
        await session.scalar(
            text("SELECT count(*) FROM tags WHERE tenant_id = :t"), {"t": tenant_id}
        )
        or 0
    )


async def insert_tag(
    session: AsyncSession, tenant_id: uuid.UUID, group_id: int, name: str
) -> int | None:
    """The new tag's id; None when its group has a tag of that name."""
    found = await session.scalar(
        text(
            """
            INSERT INTO tags (tenant_id, group_id, name) VALUES (:t, :g, :name)
            ON CONFLICT ON CONSTRAINT uq_tags_name DO NOTHING
            RETURNING id
            """
        ),
        {"t": tenant_id, "g": group_id, "name": name},
    )
    return None if found is None else int(found)


async def list_tags(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    *,
    group_id: int | None,
    after: int | None,
    limit: int,
) -> list[dict[str, Any]]:
    rows = await session.execute(
        text(
            f"""
            SELECT {_TAG_COLUMNS} FROM tags t JOIN tag_groups g ON g.id = t.group_id
             WHERE t.tenant_id = :t
               AND (CAST(:g AS bigint) IS NULL OR t.group_id = :g)
               AND (CAST(:after AS bigint) IS NULL OR t.id > :after)
             ORDER BY t.id LIMIT :limit
            """
        ),
        {"t": tenant_id, "g": group_id, "after": after, "limit": limit},
    )
    return [dict(r._mapping) for r in rows]


async def get_tag(
    session: AsyncSession, tenant_id: uuid.UUID, tag_id: int, *, lock: LockMode = ""
) -> dict[str, Any] | None:
    sql = (
        f"SELECT {_TAG_COLUMNS} FROM tags t JOIN tag_groups g ON g.id = t.group_id"
        " WHERE t.tenant_id = :t AND t.id = :id"
    )
    row = (
        await session.execute(
            text(f"{sql} {lock} OF t" if lock else sql),
            {"t": tenant_id, "id": tag_id},
        )
    ).first()
    return None if row is None else dict(row._mapping)


async def rename_tag(session: AsyncSession, tenant_id: uuid.UUID, tag_id: int, name: str) -> bool:
    """False when the group has another tag of that name."""
    return await _unless_taken(
        session,
        text("UPDATE tags SET name = :n, updated_at = now() WHERE tenant_id = :t AND id = :id"),
        {"t": tenant_id, "n": name, "id": tag_id},
        "uq_tags_name",
    )


async def delete_tags(session: AsyncSession, tenant_id: uuid.UUID, tag_ids: Sequence[int]) -> None:
    await session.execute(
        text("DELETE FROM tags WHERE tenant_id = :t AND id = ANY(CAST(:ids AS bigint[]))"),
        {"t": tenant_id, "ids": list(tag_ids)},
    )


# --- contacts as the read model knows them -----------------------------------------------


async def profile_status(
    session: AsyncSession, tenant_id: uuid.UUID, contact_id: uuid.UUID
) -> str | None:
    """live, merged or erased; None when the read model does not know the contact yet."""
    found = await session.scalar(
        text("SELECT status FROM tagging_profiles WHERE tenant_id = :t AND contact_id = :c"),
        {"t": tenant_id, "c": contact_id},
    )
    return None if found is None else str(found)


async def live_contacts(
    session: AsyncSession, tenant_id: uuid.UUID, contact_ids: Sequence[uuid.UUID]
) -> set[uuid.UUID]:
    """Those of the contacts the read model knows as live."""
    rows = await session.scalars(
        text(
            "SELECT p.contact_id FROM unnest(CAST(:c AS uuid[])) AS u(id)"
            " JOIN tagging_profiles p ON p.tenant_id = :t AND p.contact_id = u.id"
            " WHERE p.status = 'live'"
        ),
        {"t": tenant_id, "c": list(contact_ids)},
    )
    return set(rows)


async def segment_exists(session: AsyncSession, tenant_id: uuid.UUID, segment_id: int) -> bool:
    return bool(
        await session.scalar(
            text("SELECT 1 FROM segments WHERE tenant_id = :t AND id = :id"),
            {"t": tenant_id, "id": segment_id},
        )
    )


async def segment_member_ids(
    session: AsyncSession, tenant_id: uuid.UUID, segment_id: int
) -> list[uuid.UUID]:
    """The segment's live members."""
    rows = await session.scalars(
        text(
            "SELECT m.contact_id FROM segment_members m"
            " JOIN tagging_profiles p ON p.tenant_id = m.tenant_id AND p.contact_id = m.contact_id"
            " WHERE m.tenant_id = :t AND m.segment_id = :s AND p.status = 'live'"
            " ORDER BY m.contact_id"
        ),
        {"t": tenant_id, "s": segment_id},
    )
    return list(rows)


# --- a contact's tags -----------------------------------------------------------------


async def contact_tags(
    session: AsyncSession, tenant_id: uuid.UUID, contact_id: uuid.UUID, now: datetime
) -> list[dict[str, Any]]:
    rows = await session.execute(
        text(
            """
            SELECT ct.tag_id, t.name AS tag, t.group_id, g.name AS "group",
                   tag_weight(ct.weight, ct.weighted_at, ct.half_life_days, :now) AS weight,
                   ct.source, ct.first_raised_at, ct.last_raised_at
              FROM contact_tags ct
              JOIN tags t ON t.id = ct.tag_id
              JOIN tag_groups g ON g.id = t.group_id
             WHERE ct.tenant_id = :t AND ct.contact_id = :c
             ORDER BY t.group_id, ct.tag_id
            """
        ),
        {"t": tenant_id, "c": contact_id, "now": now},
    )
    return [dict(r._mapping) for r in rows]


async def contact_history(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    contact_id: uuid.UUID,
    tag_ids: Sequence[int],
) -> list[dict[str, Any]]:
    rows = await session.execute(
        text(
            """
            SELECT tag_id, action, weight, source, cause, at FROM contact_tag_history
             WHERE tenant_id = :t AND contact_id = :c AND tag_id = ANY(CAST(:tags AS bigint[]))
             ORDER BY tag_id, id
            """
        ),
        {"t": tenant_id, "c": contact_id, "tags": list(tag_ids)},
    )
    return [dict(r._mapping) for r in rows]


async def tag_holders(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    tag_id: int,
    now: datetime,
    *,
    owner_staff: str | None,
    after: uuid.UUID | None,
    limit: int,
) -> list[dict[str, Any]]:
    """The live contacts holding the tag, by contact id (only `owner_staff`'s when given)."""
    rows = await session.execute(
        text(
            """
            SELECT ct.contact_id,
                   tag_weight(ct.weight, ct.weighted_at, ct.half_life_days, :now) AS weight,
                   ct.source, ct.first_raised_at, ct.last_raised_at
              FROM contact_tags ct
              JOIN tagging_profiles p ON p.tenant_id = ct.tenant_id AND p.contact_id = ct.contact_id
             WHERE ct.tenant_id = :t AND ct.tag_id = :tag AND p.status = 'live'
               AND (CAST(:owner AS text) IS NULL OR p.owner_staff = :owner)
               AND (CAST(:after AS uuid) IS NULL OR ct.contact_id > :after)
             ORDER BY ct.contact_id LIMIT :limit
            """
        ),
        {
            "t": tenant_id,
            "tag": tag_id,
            "now": now,
            "owner": owner_staff,
            "after": after,
            "limit": limit,
        },
    )
    return [dict(r._mapping) for r in rows]
