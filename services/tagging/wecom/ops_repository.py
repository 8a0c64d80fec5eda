"""SQL of the WeCom op queue (wecom_tag_ops): enqueueing (coalesced per subject),
claiming within the corp's limit of calls in flight, outcomes, and what ops see."""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

NOTIFY_CHANNEL = "scrm_wecom_tags"
_NOTIFY = text(f"NOTIFY {NOTIFY_CHANNEL}")
_PENDING = "status = 'pending' AND coalesce_key IS NOT NULL"


# --- the queue ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    id: int
    tenant_id: uuid.UUID
    kind: str
    serial_key: str
    payload: dict[str, Any]
    status: str
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    result: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


_OP_COLUMNS = """id, tenant_id, kind, serial_key, payload, status, attempts, next_attempt_at,
    last_error, result, created_at, updated_at, finished_at"""


def _op(row: Any) -> Op:
    return Op(**dict(row._mapping))


async def enqueue_op(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    kind: str,
    payload: Mapping[str, Any],
    *,
    serial_key: str,
    coalesce_key: str | None,
    now: datetime,
) -> int:
    """The new op's id, or that of the pending op with the same coalescing key."""
    found = await session.scalar(
        text(
            f"""
            INSERT INTO wecom_tag_ops (tenant_id, kind, serial_key, coalesce_key, payload,
                                       next_attempt_at)
            VALUES (:t, :kind, :serial, :coalesce, CAST(:payload AS jsonb), :now)
            ON CONFLICT (tenant_id, coalesce_key) WHERE {_PENDING} DO NOTHING
            RETURNING id
            """
        ),
        {
            "t": tenant_id,
            "kind": kind,
            "serial": serial_key,
            "coalesce": coalesce_key,
            "payload": json.dumps(payload),
            "now": now,
        },
    )
    if found is None:
        found = await session.scalar(
            text(
                f"SELECT id FROM wecom_tag_ops WHERE tenant_id = :t AND coalesce_key = :c"
                f" AND {_PENDING}"
            ),
            {"t": tenant_id, "c": coalesce_key},
        )
    await session.execute(_NOTIFY)
    return int(found or 0)


async def enqueue_corp_ops(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    ops: Sequence[tuple[str, Mapping[str, Any], str]],
    now: datetime,
) -> None:
    """Ops of the corp's definitions, (kind, payload, coalescing key) each, in order; one
    already pending with the same key covers its repeat."""
    if not ops:
        return
    await session.execute(
        text(
            f"""
            INSERT INTO wecom_tag_ops (tenant_id, kind, serial_key, coalesce_key, payload,
                                       next_attempt_at)
            SELECT :t, x.kind, 'corp', x.coalesce_key, x.payload, :now
              FROM unnest(CAST(:kinds AS text[]), CAST(:payloads AS jsonb[]),
                          CAST(:keys AS text[]))
                   WITH ORDINALITY AS x(kind, payload, coalesce_key, n)
             ORDER BY x.n
            ON CONFLICT (tenant_id, coalesce_key) WHERE {_PENDING} DO NOTHING
            """
        ),
        {
            "t": tenant_id,
            "kinds": [kind for kind, _, _ in ops],
            "payloads": [json.dumps(payload) for _, payload, _ in ops],
            "keys": [key for _, _, key in ops],
            "now": now,
        },
    )
    await session.execute(_NOTIFY)


async def sync_requested(session: AsyncSession, tenant_id: uuid.UUID) -> bool:
    """Whether a full sync of the tenant's corp tags was ever queued (and did not fail)."""
    found = await session.scalar(
        text(
            "SELECT EXISTS (SELECT 1 FROM wecom_tag_ops WHERE tenant_id = :t AND kind = 'sync'"
            " AND status <> 'failed')"
        ),
        {"t": tenant_id},
    )
    return bool(found)


async def enqueue_marks(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    tags_of: Mapping[uuid.UUID, Collection[int]],
    now: datetime,
) -> None:
    """One mark op per contact, joining the contact's pending one (its tag ids merged)."""
    if not tags_of:
        return
    contacts = list(tags_of)
    await session.execute(
        text(
            f"""
            INSERT INTO wecom_tag_ops (tenant_id, kind, serial_key, coalesce_key, payload,
                                       next_attempt_at)
            SELECT :t, 'mark', 'contact:' || x.contact_id, 'mark:' || x.contact_id,
                   jsonb_build_object('contact_id', x.contact_id, 'tag_ids', x.tag_ids), :now
              FROM unnest(CAST(:contacts AS uuid[]), CAST(:tag_ids AS jsonb[]))
                   AS x(contact_id, tag_ids)
            ON CONFLICT (tenant_id, coalesce_key) WHERE {_PENDING} DO UPDATE
               SET payload = jsonb_set(
                       wecom_tag_ops.payload, '{{tag_ids}}',
                       (SELECT jsonb_agg(DISTINCT v ORDER BY v)
                          FROM jsonb_array_elements(wecom_tag_ops.payload -> 'tag_ids'
                                                    || EXCLUDED.payload -> 'tag_ids') AS v)),
                   updated_at = now()
            """
        ),
        {
            "t": tenant_id,
            "contacts": contacts,
            "tag_ids": [json.dumps(sorted(set(tags_of[c]))) for c in contacts],
            "now": now,
        },
    )
    await session.execute(_NOTIFY)


async def enqueue_marks_for_holders(
    session: AsyncSession, tenant_id: uuid.UUID, tag_id: int, now: datetime
) -> int:
    """A mark op for every contact holding the tag (it just got its WeCom id)."""
    result = await session.execute(
        text(
            f"""
            INSERT INTO wecom_tag_ops (tenant_id, kind, serial_key, coalesce_key, payload,
                                       next_attempt_at)
            SELECT :t, 'mark', 'contact:' || ct.contact_id, 'mark:' || ct.contact_id,
                   jsonb_build_object('contact_id', ct.contact_id,
                                      'tag_ids', jsonb_build_array(ct.tag_id)), :now
              FROM contact_tags ct WHERE ct.tenant_id = :t AND ct.tag_id = :tag
            ON CONFLICT (tenant_id, coalesce_key) WHERE {_PENDING} DO UPDATE
               SET payload = jsonb_set(
                       wecom_tag_ops.payload, '{{tag_ids}}',
                       (SELECT jsonb_agg(DISTINCT v ORDER BY v)
                          FROM jsonb_array_elements(wecom_tag_ops.payload -> 'tag_ids'
                                                    || EXCLUDED.payload -> 'tag_ids') AS v)),
                   updated_at = now()
            """
        ),
        {"t": tenant_id, "tag": tag_id, "now": now},
    )
    count = int(result.rowcount)  # type: ignore[attr-defined]
    if count:
        await session.execute(_NOTIFY)
    return count


async def enqueue_refetches(
    session: AsyncSession, tenant_id: uuid.UUID, contact_ids: Collection[uuid.UUID], now: datetime
) -> None:
    """One refetch op per contact (a pending one already covers it)."""
    if not contact_ids:
        return
    await session.execute(
        text(
            f"""
            INSERT INTO wecom_tag_ops (tenant_id, kind, serial_key, coalesce_key, payload,
                                       next_attempt_at)
            SELECT :t, 'refetch', 'contact:' || c, 'refetch:' || c,
                   jsonb_build_object('contact_id', c), :now
              FROM unnest(CAST(:contacts AS uuid[])) AS c
            ON CONFLICT (tenant_id, coalesce_key) WHERE {_PENDING} DO NOTHING
            """
        ),
        {"t": tenant_id, "contacts": list(contact_ids), "now": now},
    )
    await session.execute(_NOTIFY)


async def enqueue_pushes_for_unlinked(
    session: AsyncSession, tenant_id: uuid.UUID, group_ids: Collection[int], now: datetime
) -> int:
    """A push op for each tag of these groups that WeCom does not have yet."""
    if not group_ids:
        return 0
    result = await session.execute(
        text(
            f"""
            INSERT INTO wecom_tag_ops (tenant_id, kind, serial_key, coalesce_key, payload,
                                       next_attempt_at)
            SELECT :t, 'push_tag', 'corp', 'push_tag:' || id, jsonb_build_object('tag_id', id),
                   :now
              FROM tags
             WHERE tenant_id = :t AND group_id = ANY(CAST(:groups AS bigint[]))
               AND wecom_tag_id IS NULL
            ON CONFLICT (tenant_id, coalesce_key) WHERE {_PENDING} DO NOTHING
            """
        ),
        {"t": tenant_id, "groups": list(group_ids), "now": now},
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


async def due_tenants(session: AsyncSession, now: datetime) -> list[uuid.UUID]:
    """Tenants with an op due now (or an in-flight one whose worker died): one index probe
    per tenant with pending ops, however long their queues."""
    rows = await session.scalars(
        text(
            """
            WITH RECURSIVE pending(tenant_id) AS (
                (SELECT tenant_id FROM wecom_tag_ops WHERE status = 'pending'
                  ORDER BY tenant_id LIMIT 1)
                UNION ALL
                SELECT (SELECT o.tenant_id FROM wecom_tag_ops o
                         WHERE o.status = 'pending' AND o.tenant_id > p.tenant_id
                         ORDER BY o.tenant_id LIMIT 1)
                  FROM pending p WHERE p.tenant_id IS NOT NULL
            )
            SELECT p.tenant_id FROM pending p
             WHERE p.tenant_id IS NOT NULL
               AND EXISTS (SELECT 1 FROM wecom_tag_ops o
                            WHERE o.status = 'pending' AND o.tenant_id = p.tenant_id
                              AND o.next_attempt_at <= greatest(:now, now()))
            UNION
            SELECT tenant_id FROM wecom_tag_ops
             WHERE status = 'in_flight' AND lease_until < greatest(:now, now())
            """
        ),
        {"now": now},
    )
    return list(rows)


# An op runs only when no older op of its serial key is unfinished.
_HEAD = """NOT EXISTS (SELECT 1 FROM wecom_tag_ops p
                     WHERE p.tenant_id = o.tenant_id AND p.serial_key = o.serial_key
                       AND p.id < o.id AND p.status IN ('pending', 'in_flight'))"""
_AT = "greatest(CAST(:now AS timestamptz), now())"
_RETURNING = ", ".join("o." + c.strip() for c in _OP_COLUMNS.split(","))


async def claim(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    now: datetime,
    *,
    max_in_flight: int,
    lease_seconds: float,
) -> list[Op]:
    """Claim the tenant's due ops, at most `max_in_flight` in flight at once across every
    worker: claims of one tenant take turns (an advisory lock held to commit) and count
    the ops already in flight. Only the oldest unfinished op of each serial key runs;
    ops whose worker died (their lease ran out) go first."""
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended('wecom_tag_ops:' || :t, 0))"),
        {"t": str(tenant_id)},
    )
    busy = int(
        await session.scalar(
            text(
                f"SELECT count(*) FROM wecom_tag_ops WHERE tenant_id = :t"
                f" AND status = 'in_flight' AND lease_until >= {_AT}"
            ),
            {"t": tenant_id, "now": now},
        )
        or 0
    )
    claimed: list[Op] = []
    for due in (
        f"o.status = 'in_flight' AND o.lease_until < {_AT}",
        f"o.status = 'pending' AND o.next_attempt_at <= {_AT}",
    ):
        slots = max_in_flight - busy - len(claimed)
        if slots <= 0:
            break
        rows = await session.execute(
            text(
                f"""
                WITH chosen AS (
                    SELECT o.id FROM wecom_tag_ops o
                     WHERE o.tenant_id = :t AND {due} AND {_HEAD}
                     ORDER BY o.id LIMIT :slots
                       FOR UPDATE OF o SKIP LOCKED
                )
                UPDATE wecom_tag_ops o
                   SET status = 'in_flight', attempts = o.attempts + 1,
                       lease_until = {_AT} + make_interval(secs => :lease), updated_at = now()
                  FROM chosen WHERE o.id = chosen.id
                RETURNING {_RETURNING}
                """
            ),
            {"t": tenant_id, "now": now, "slots": slots, "lease": lease_seconds},
        )
        claimed += [_op(r) for r in rows]
    return sorted(claimed, key=lambda op: op.id)


async def finish(
    session: AsyncSession, op_id: int, result: Mapping[str, Any] | None, now: datetime
) -> None:
    await session.execute(
        text(
            """
            UPDATE wecom_tag_ops
               SET status = 'done', result = CAST(:result AS jsonb), lease_until = NULL,
                   last_error = NULL, finished_at = :now, updated_at = now()
             WHERE id = :id AND status = 'in_flight'
            """
        ),
        {"id": op_id, "result": json.dumps(result) if result is not None else None, "now": now},
    )


async def finish_many(
    session: AsyncSession, results: Mapping[int, Mapping[str, Any] | None], now: datetime
) -> None:
    if not results:
        return
    ids = list(results)
    await session.execute(
        text(
            """
            UPDATE wecom_tag_ops o
               SET status = 'done', result = x.result, lease_until = NULL, last_error = NULL,
                   finished_at = :now, updated_at = now()
              FROM unnest(CAST(:ids AS bigint[]), CAST(:results AS jsonb[])) AS x(id, result)
             WHERE o.id = x.id AND o.status = 'in_flight'
            """
        ),
        {
            "ids": ids,
            "results": [json.dumps(results[i]) if results[i] is not None else None for i in ids],
            "now": now,
        },
    )


async def retry_later(
    session: AsyncSession, op_id: int, error: str, at: datetime, *, give_up: bool
) -> None:
    """Back to pending until `at`, or failed for good (`give_up`)."""
    await session.execute(
        text(
            """
            UPDATE wecom_tag_ops
               SET status = CASE WHEN :give_up THEN 'failed' ELSE 'pending' END,
                   next_attempt_at = :at, last_error = :error, lease_until = NULL,
                   finished_at = CASE WHEN :give_up THEN now() END, updated_at = now()
             WHERE id = :id AND status = 'in_flight'
            """
        ),
        {"id": op_id, "error": error[:4000], "at": at, "give_up": give_up},
    )
    if not give_up:
        await session.execute(_NOTIFY)


async def list_ops(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    *,
    status: str | None,
    kind: str | None,
    after: int | None,
    limit: int,
) -> list[Op]:
    rows = await session.execute(
        text(
            f"""
            SELECT {_OP_COLUMNS} FROM wecom_tag_ops
             WHERE tenant_id = :t
               AND (CAST(:status AS text) IS NULL OR status = :status)
               AND (CAST(:kind AS text) IS NULL OR kind = :kind)
               AND (CAST(:after AS bigint) IS NULL OR id > :after)
             ORDER BY id LIMIT :limit
            """
        ),
        {"t": tenant_id, "status": status, "kind": kind, "after": after, "limit": limit},
    )
    return [_op(r) for r in rows]


async def get_op(session: AsyncSession, tenant_id: uuid.UUID, op_id: int) -> Op | None:
    row = (
        await session.execute(
            text(f"SELECT {_OP_COLUMNS} FROM wecom_tag_ops WHERE tenant_id = :t AND id = :id"),
            {"t": tenant_id, "id": op_id},
        )
    ).first()
    return None if row is None else _op(row)


async def requeue_failed(
    session: AsyncSession, tenant_id: uuid.UUID, op_id: int, now: datetime
) -> bool:
    """A failed op is due again with its attempts reset; False when it is not failed."""
    result = await session.execute(
        text(
            """
            UPDATE wecom_tag_ops
               SET status = 'pending', attempts = 0, next_attempt_at = :now,
                   finished_at = NULL, updated_at = now()
             WHERE tenant_id = :t AND id = :id AND status = 'failed'
            """
        ),
        {"t": tenant_id, "id": op_id, "now": now},
    )
    if result.rowcount:  # type: ignore[attr-defined]
        await session.execute(_NOTIFY)
        return True
    return False
