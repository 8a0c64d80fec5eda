"""Every SQL statement of tag rules: the rules themselves, their defaults, the counts in
a window the engine and the dry-run need, and the record of firings. The engine's
statements take a whole batch as arrays (unnest): a few statements per batch."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

_RULE_COLUMNS = (
    'id, tenant_id, name, event_type, "where", min_count, window_days, action, weight, cap,'
    " tag_id, group_id, from_property, status, default_key, created_at, updated_at"
)


@dataclass(frozen=True)
class RuleRow:
    id: int
    tenant_id: uuid.UUID
    name: str
    event_type: str
    where: dict[str, Any]
    min_count: int
    window_days: int | None
    action: str
    weight: float
    cap: float | None
    tag_id: int | None
    group_id: int | None
    from_property: str | None
    status: str
    default_key: str | None
    created_at: datetime
    updated_at: datetime


def _rule(row: Any) -> RuleRow:
    return RuleRow(**dict(row._mapping))


# -- rules -----------------------------------------------------------------------------------


async def insert_rule(
    session: AsyncSession, tenant_id: uuid.UUID, values: dict[str, Any]
) -> int | None:
    """The new rule's id; None when the tenant has a rule of this name."""
    rule_id: int | None = await session.scalar(
        text(
            """
            INSERT INTO tag_rules (tenant_id, name, event_type, "where", min_count,
                                   window_days, action, weight, cap, tag_id, group_id,
                                   from_property, status)
            VALUES (:tenant, :name, :event_type, CAST(:where AS jsonb), :min_count,
                    :window_days, :action, :weight, :cap, :tag_id, :group_id,
                    :from_property, :status)
            ON CONFLICT ON CONSTRAINT uq_tag_rules_name DO NOTHING
            RETURNING id
            """
        ),
        {"tenant": tenant_id, **values, "where": json.dumps(values["where"])},
    )
    return rule_id


async def update_rule(
    session: AsyncSession, tenant_id: uuid.UUID, rule_id: int, values: dict[str, Any], now: datetime
) -> bool | None:
    """True when stored; False when another rule of the tenant has the name; None when
    there is no such rule."""
    taken = await session.scalar(
        text("SELECT 1 FROM tag_rules WHERE tenant_id = :t AND name = :n AND id <> :id"),
        {"t": tenant_id, "n": values["name"], "id": rule_id},
    )
    if taken:
        return False
    found = await session.scalar(
        text(
            """
            UPDATE tag_rules
               SET name = :name, event_type = :event_type, "where" = CAST(:where AS jsonb),
                   min_count = :min_count, window_days = :window_days, action = :action,
                   weight = :weight, cap = :cap, tag_id = :tag_id, group_id = :group_id,
                   from_property = :from_property, status = :status, updated_at = :now
             WHERE tenant_id = :tenant AND id = :id
            RETURNING id
            """
        ),
        {
            "tenant": tenant_id,
            "id": rule_id,
            "now": now,
            **values,
            "where": json.dumps(values["where"]),
        },
    )
    return True if found is not None else None


async def set_status(
    session: AsyncSession, tenant_id: uuid.UUID, rule_id: int, status: str, now: datetime
) -> bool:
    found = await session.scalar(
        text(
            "UPDATE tag_rules SET status = :s, updated_at = :now"
            " WHERE tenant_id = :t AND id = :id RETURNING id"
        ),
        {"s": status, "now": now, "t": tenant_id, "id": rule_id},
    )
    return found is not None


async def delete_rule(session: AsyncSession, tenant_id: uuid.UUID, rule_id: int) -> bool:
    found = await session.scalar(
        text("DELETE FROM tag_rules WHERE tenant_id = :t AND id = :id RETURNING id"),
        {"t": tenant_id, "id": rule_id},
    )
    return found is not None


async def rule(
    session: AsyncSession, tenant_id: uuid.UUID, rule_id: int, *, lock: bool = False
) -> RuleRow | None:
    sql = f"SELECT {_RULE_COLUMNS} FROM tag_rules WHERE tenant_id = :t AND id = :id"
    row = (
        await session.execute(
            text(sql + (" FOR UPDATE" if lock else "")), {"t": tenant_id, "id": rule_id}
        )
    ).first()
    return _rule(row) if row is not None else None


async def rules_page(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    *,
    status: str | None,
    event_type: str | None,
    after: int | None,
    limit: int,
) -> list[RuleRow]:
    rows = await session.execute(
        text(
            f"""
            SELECT {_RULE_COLUMNS} FROM tag_rules
             WHERE tenant_id = :t AND id > :after
               AND (CAST(:status AS text) IS NULL OR status = :status)
               AND (CAST(:event_type AS text) IS NULL OR event_type = :event_type)
             ORDER BY id LIMIT :limit
            """
        ),
        {
            "t": tenant_id,
            "after": after or 0,
            "status": status,
            "event_type": event_type,
            "limit": limit,
        },
    )
    return [_rule(row) for row in rows]


async def active_rules(
    session: AsyncSession, tenant_ids: Sequence[uuid.UUID], event_types: Sequence[str]
) -> list[RuleRow]:
    """The active rules of these tenants on these event types: one statement."""
    rows = await session.execute(
        text(
            f"""
            SELECT {_RULE_COLUMNS} FROM tag_rules
             WHERE tenant_id = ANY(CAST(:tenants AS uuid[]))
               AND event_type = ANY(CAST(:types AS text[]))
               AND status = 'active'
             ORDER BY id
            """
        ),
        {"tenants": list(tenant_ids), "types": list(event_types)},
    )
    return [_rule(row) for row in rows]


async def tag_exists(session: AsyncSession, tenant_id: uuid.UUID, tag_id: int) -> bool:
    found = await session.scalar(
        text("SELECT 1 FROM tags WHERE tenant_id = :t AND id = :id"), {"t": tenant_id, "id": tag_id}
    )
    return found is not None


async def group_exists(session: AsyncSession, tenant_id: uuid.UUID, group_id: int) -> bool:
    found = await session.scalar(
        text("SELECT 1 FROM tag_groups WHERE tenant_id = :t AND id = :id"),
        {"t": tenant_id, "id": group_id},
    )
    return found is not None


# -- defaults ----------------------------------------------------------------------------------


async def claim_tenants(session: AsyncSession, tenant_ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
    """The tenants among these whose defaults are not installed yet, now marked as
    installed (in this transaction: a concurrent one waits, then finds them marked)."""
    result = await session.execute(
        text(
            """
            INSERT INTO tag_rule_tenants (tenant_id)
            SELECT DISTINCT t FROM unnest(CAST(:tenants AS uuid[])) AS t
              JOIN tenants ON tenants.id = t
            ON CONFLICT (tenant_id) DO NOTHING
            RETURNING tenant_id
            """
        ),
        {"tenants": sorted(set(tenant_ids))},
    )
    return list(result.scalars())


@dataclass(frozen=True)
class GroupSpec:
    name: str
    kind: str
    half_life_days: float | None
    floor: float


async def ensure_groups(
    session: AsyncSession, tenant_ids: Sequence[uuid.UUID], groups: Sequence[GroupSpec]
) -> dict[tuple[uuid.UUID, str], int]:
    """Each tenant's group of each name, created when missing: (tenant, name) -> id."""
    pairs = [(t, g) for t in tenant_ids for g in groups]
    params = {
        "tenants": [t for t, _ in pairs],
        "names": [g.name for _, g in pairs],
        "kinds": [g.kind for _, g in pairs],
        "half_lives": [g.half_life_days for _, g in pairs],
        "floors": [g.floor for _, g in pairs],
    }
    await session.execute(
        text(
            """
            INSERT INTO tag_groups (tenant_id, name, kind, half_life_days, floor)
            SELECT * FROM unnest(CAST(:tenants AS uuid[]), CAST(:names AS text[]),
                                 CAST(:kinds AS text[]), CAST(:half_lives AS float8[]),
                                 CAST(:floors AS float8[]))
            ON CONFLICT ON CONSTRAINT uq_tag_groups_name DO NOTHING
            """
        ),
        params,
    )
    rows = await session.execute(
        text(
            """
            SELECT g.tenant_id, g.name, g.id FROM tag_groups g
              JOIN unnest(CAST(:tenants AS uuid[]), CAST(:names AS text[])) AS w(tenant_id, name)
                ON g.tenant_id = w.tenant_id AND g.name = w.name
            """
        ),
        {"tenants": params["tenants"], "names": params["names"]},
    )
    return {(row.tenant_id, row.name): row.id for row in rows}


def _tag_arrays(wanted: Sequence[tuple[uuid.UUID, int, str]]) -> dict[str, Any]:
    unique = sorted(set(wanted), key=lambda w: (str(w[0]), w[1], w[2]))
    return {
        "tenants": [w[0] for w in unique],
        "groups": [w[1] for w in unique],
        "names": [w[2] for w in unique],
    }


async def find_tags(
    session: AsyncSession, wanted: Sequence[tuple[uuid.UUID, int, str]]
) -> dict[tuple[uuid.UUID, int, str], int]:
    """The tags of these (tenant, group, name) that exist: -> tag id."""
    if not wanted:
        return {}
    rows = await session.execute(
        text(
            """
            SELECT t.tenant_id, t.group_id, t.name, t.id FROM tags t
              JOIN unnest(CAST(:tenants AS uuid[]), CAST(:groups AS bigint[]),
                          CAST(:names AS text[])) AS w(tenant_id, group_id, name)
                ON t.tenant_id = w.tenant_id AND t.group_id = w.group_id AND t.name = w.name
            """
        ),
        _tag_arrays(wanted),
    )
    return {(row.tenant_id, row.group_id, row.name): row.id for row in rows}


async def insert_tags(session: AsyncSession, wanted: Sequence[tuple[uuid.UUID, int, str]]) -> None:
    """Create these (tenant, group, name) tags, those of a group the tenant has (one that
    exists, or that a concurrent transaction adds meanwhile, is left as it is)."""
    if not wanted:
        return
    await session.execute(
        text(
            """
            INSERT INTO tags (tenant_id, group_id, name)
            SELECT w.tenant_id, w.group_id, w.name
              FROM unnest(CAST(:tenants AS uuid[]), CAST(:groups AS bigint[]),
                          CAST(:names AS text[])) AS w(tenant_id, group_id, name)
              JOIN tag_groups g ON g.id = w.group_id AND g.tenant_id = w.tenant_id
            ON CONFLICT ON CONSTRAINT uq_tags_name DO NOTHING
            """
        ),
        _tag_arrays(wanted),
    )


async def insert_default_rules(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    """The default rules (each once per tenant: their default_key)."""
    if not rows:
        return
    await session.execute(
        text(
            """
            INSERT INTO tag_rules (tenant_id, name, event_type, "where", min_count, window_days,
                                   action, weight, cap, tag_id, group_id, from_property,
                                   default_key)
            SELECT r.tenant_id, r.name, r.event_type, '{}'::jsonb, r.min_count, r.window_days,
                   'raise', r.weight, r.cap, r.tag_id, r.group_id, r.from_property, r.key
              FROM unnest(CAST(:tenants AS uuid[]), CAST(:names AS text[]),
                          CAST(:types AS text[]), CAST(:counts AS int[]),
                          CAST(:windows AS int[]), CAST(:weights AS float8[]),
                          CAST(:caps AS float8[]), CAST(:tags AS bigint[]),
                          CAST(:groups AS bigint[]), CAST(:props AS text[]),
                          CAST(:keys AS text[]))
                   AS r(tenant_id, name, event_type, min_count, window_days, weight, cap, tag_id,
                        group_id, from_property, key)
            ON CONFLICT DO NOTHING
            """
        ),
        {
            "tenants": [r["tenant_id"] for r in rows],
            "names": [r["name"] for r in rows],
            "types": [r["event_type"] for r in rows],
            "counts": [r["min_count"] for r in rows],
            "windows": [r["window_days"] for r in rows],
            "weights": [r["weight"] for r in rows],
            "caps": [r["cap"] for r in rows],
            "tags": [r["tag_id"] for r in rows],
            "groups": [r["group_id"] for r in rows],
            "props": [r["from_property"] for r in rows],
            "keys": [r["default_key"] for r in rows],
        },
    )


# -- the engine --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """An applied event that a rule with a window reads: its count decides."""

    tenant_id: uuid.UUID
    contact_id: uuid.UUID
    event_type: str
    source_event_id: uuid.UUID
    occurred_at: datetime
    # The rule's `where`, with the derived tag's property value when it has one.
    condition: dict[str, Any]
    window_days: int
    min_count: int


_COUNT_IN_WINDOWS = text(
    """
    SELECT c.i, (
        SELECT count(*) FROM (
            SELECT 1 FROM tagging_events e
             WHERE e.tenant_id = c.tenant_id AND e.contact_id = c.contact_id
               AND e.event_type = c.event_type
               AND e.occurred_at > c.at - make_interval(days => c.window_days)
               AND (e.occurred_at < c.at
                    OR (e.occurred_at = c.at AND (a.id IS NULL OR e.id <= a.id)))
               AND e.properties @> c.cond
             LIMIT c.min_count
        ) AS counted
    ) + CASE WHEN a.id IS NULL THEN 1 ELSE 0 END AS n
      FROM unnest(CAST(:i AS int[]), CAST(:tenants AS uuid[]), CAST(:contacts AS uuid[]),
                  CAST(:types AS text[]), CAST(:sources AS uuid[]),
                  CAST(:ats AS timestamptz[]), CAST(CAST(:conds AS text[]) AS jsonb[]),
                  CAST(:windows AS int[]), CAST(:mins AS int[]))
           AS c(i, tenant_id, contact_id, event_type, source_event_id, at, cond, window_days,
                min_count)
      LEFT JOIN tagging_events a ON a.source_event_id = c.source_event_id
    """
)


async def counts_in_windows(session: AsyncSession, candidates: Sequence[Candidate]) -> list[int]:
    """For each candidate, how many of its contact's events of its type matching its
    condition happened in the `window_days` ending at it (itself included, later
    ones not), counted up to its `min_count`: one statement for the batch."""
    if not candidates:
        return []
    rows = await session.execute(
        _COUNT_IN_WINDOWS,
        {
            "i": list(range(len(candidates))),
            "tenants": [c.tenant_id for c in candidates],
            "contacts": [c.contact_id for c in candidates],
            "types": [c.event_type for c in candidates],
            "sources": [c.source_event_id for c in candidates],
            "ats": [c.occurred_at for c in candidates],
            "conds": [json.dumps(c.condition) for c in candidates],
            "windows": [c.window_days for c in candidates],
            "mins": [c.min_count for c in candidates],
        },
    )
    counts = [0] * len(candidates)
    for i, n in rows:
        counts[i] = int(n)
    return counts


@dataclass(frozen=True)
class FiringRow:
    rule_id: int
    source_event_id: uuid.UUID
    tenant_id: uuid.UUID
    contact_id: uuid.UUID
    tag_id: int | None
    outcome: str
    reason: str | None


async def claim_firings(
    session: AsyncSession, firings: Sequence[FiringRow], now: datetime
) -> set[tuple[int, uuid.UUID]]:
    """Record the firings, in the order given; returns the (rule, source event) pairs
    that are new (a pair recorded before, by another delivery or batch, is not)."""
    if not firings:
        return set()
    rows = await session.execute(
        text(
            """
            INSERT INTO tag_rule_firings (rule_id, source_event_id, tenant_id, contact_id, tag_id,
                                          outcome, reason, fired_at)
            SELECT f.rule_id, f.source_event_id, f.tenant_id, f.contact_id, f.tag_id,
                   f.outcome, f.reason, CAST(:now AS timestamptz)
              FROM unnest(CAST(:rules AS bigint[]), CAST(:sources AS uuid[]),
                          CAST(:tenants AS uuid[]), CAST(:contacts AS uuid[]),
                          CAST(:tags AS bigint[]), CAST(:outcomes AS text[]),
                          CAST(:reasons AS text[])) WITH ORDINALITY
                   AS f(rule_id, source_event_id, tenant_id, contact_id, tag_id, outcome, reason,
                        n)
             -- In the order given (the events' order, the same in every delivery of them,
             -- so overlapping batches take the keys in one order).
             ORDER BY f.n
            ON CONFLICT DO NOTHING
            RETURNING rule_id, source_event_id
            """
        ),
        {
            "now": now,
            "rules": [f.rule_id for f in firings],
            "sources": [f.source_event_id for f in firings],
            "tenants": [f.tenant_id for f in firings],
            "contacts": [f.contact_id for f in firings],
            "tags": [f.tag_id for f in firings],
            "outcomes": [f.outcome for f in firings],
            "reasons": [f.reason for f in firings],
        },
    )
    return {(row.rule_id, row.source_event_id) for row in rows}


async def firings_page(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    rule_id: int,
    *,
    outcome: str | None,
    after: int | None,
    limit: int,
) -> list[dict[str, Any]]:
    """A rule's firings (and skips) in the order recorded, after the id `after`."""
    rows = await session.execute(
        text(
            """
            SELECT id, source_event_id, contact_id, tag_id, outcome, reason, fired_at
              FROM tag_rule_firings
             WHERE rule_id = :r AND tenant_id = :t AND id > :after
               AND (CAST(:outcome AS text) IS NULL OR outcome = :outcome)
             ORDER BY id LIMIT :limit
            """
        ),
        {"r": rule_id, "t": tenant_id, "after": after or 0, "outcome": outcome, "limit": limit},
    )
    return [dict(row._mapping) for row in rows]


# -- the dry-run ---------------------------------------------------------------------------


async def would_tag(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    *,
    event_type: str,
    where: dict[str, Any],
    min_count: int,
    window_days: int | None,
    from_property: str | None,
    max_name: int,
    now: datetime,
    sample: int,
) -> tuple[int, list[uuid.UUID]]:
    """How many live contacts have at least `min_count` matching events in the window
    ending `now` (per value of `from_property`, among values that can name a tag), and
    the first `sample` of them by id: one statement."""
    since = now - timedelta(days=window_days) if window_days is not None else None
    row = (
        await session.execute(
            text(
                """
                WITH qualifying AS (
                    SELECT e.contact_id
                      FROM tagging_events e
                     WHERE e.tenant_id = :t AND e.event_type = :type
                       AND e.occurred_at <= :now
                       AND (CAST(:since AS timestamptz) IS NULL OR e.occurred_at > :since)
                       AND e.properties @> CAST(:where AS jsonb)
                       AND (CAST(:prop AS text) IS NULL
                            OR (jsonb_typeof(e.properties -> CAST(:prop AS text)) = 'string'
                                AND char_length(e.properties ->> CAST(:prop AS text))
                                    BETWEEN 1 AND :max_name))
                     GROUP BY e.contact_id, e.properties ->> CAST(:prop AS text)
                    HAVING count(*) >= :n
                ), contacts AS (
                    SELECT DISTINCT q.contact_id FROM qualifying q
                     WHERE NOT EXISTS (
                         SELECT 1 FROM tagging_profiles p
                          WHERE p.tenant_id = :t AND p.contact_id = q.contact_id
                            AND p.status <> 'live')
                )
                SELECT count(*) AS n,
                       (array_agg(contact_id ORDER BY contact_id))[1:CAST(:sample AS int)]
                           AS sample
                  FROM contacts
                """
            ),
            {
                "t": tenant_id,
                "type": event_type,
                "now": now,
                "since": since,
                "where": json.dumps(where),
                "prop": from_property,
                "max_name": max_name,
                "n": min_count,
                "sample": sample,
            },
        )
    ).one()
    return int(row.n), list(row.sample or [])


async def longest_window_days(session: AsyncSession, tenant_id: uuid.UUID) -> int | None:
    """The longest window of the tenant's rules: how far back they read tagging_events."""
    found: int | None = await session.scalar(
        text("SELECT max(window_days) FROM tag_rules WHERE tenant_id = :t"), {"t": tenant_id}
    )
    return found
