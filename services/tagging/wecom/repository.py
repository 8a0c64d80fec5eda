"""Every SQL statement of the tagging service's wecom part: the op queue, the corp tags
as WeCom showed them, and what mirroring writes to tag groups, tags and contact tags."""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.tagging.wecom.corp_tags import CorpTagGroup

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
    """Tenants with an op due now (or an in-flight one whose worker died)."""
    rows = await session.scalars(
        text(
            """
            SELECT DISTINCT tenant_id FROM wecom_tag_ops
             WHERE status = 'pending' AND next_attempt_at <= greatest(:now, now())
            UNION
            SELECT DISTINCT tenant_id FROM wecom_tag_ops
             WHERE status = 'in_flight' AND lease_until < greatest(:now, now())
            """
        ),
        {"now": now},
    )
    return list(rows)


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
    the ops already in flight. Only the oldest unfinished op of each serial key runs."""
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended('wecom_tag_ops:' || :t, 0))"),
        {"t": str(tenant_id)},
    )
    at = "greatest(CAST(:now AS timestamptz), now())"
    busy = int(
        await session.scalar(
            text(
                f"SELECT count(*) FROM wecom_tag_ops WHERE tenant_id = :t"
                f" AND status = 'in_flight' AND lease_until >= {at}"
            ),
            {"t": tenant_id, "now": now},
        )
        or 0
    )
    slots = max_in_flight - busy
    if slots <= 0:
        return []
    rows = await session.execute(
        text(
            f"""
            WITH heads AS (
                SELECT DISTINCT ON (serial_key) id, status, next_attempt_at, lease_until
                  FROM wecom_tag_ops
                 WHERE tenant_id = :t AND status IN ('pending', 'in_flight')
                 ORDER BY serial_key, id
            ),
            chosen AS (
                SELECT o.id FROM wecom_tag_ops o JOIN heads h ON h.id = o.id
                 WHERE (h.status = 'pending' AND h.next_attempt_at <= {at})
                    OR (h.status = 'in_flight' AND h.lease_until < {at})
                 ORDER BY o.id LIMIT :slots
                   FOR UPDATE OF o SKIP LOCKED
            )
            UPDATE wecom_tag_ops o
               SET status = 'in_flight', attempts = o.attempts + 1,
                   lease_until = {at} + make_interval(secs => :lease), updated_at = now()
              FROM chosen WHERE o.id = chosen.id
            RETURNING {", ".join("o." + c.strip() for c in _OP_COLUMNS.split(","))}
            """
        ),
        {"t": tenant_id, "now": now, "slots": slots, "lease": lease_seconds},
    )
    return sorted((_op(r) for r in rows), key=lambda op: op.id)


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


# --- definitions: what mirroring reads and writes ----------------------------------------


async def mark_origin_wecom(session: AsyncSession) -> None:
    """The definition changes of this transaction come from WeCom: enqueue none back."""
    await session.execute(text("SELECT set_config('scrm.wecom_tag_origin', 'wecom', true)"))


async def end_origin_wecom(session: AsyncSession) -> None:
    """What follows in this transaction is made here again (enqueued as usual)."""
    await session.execute(text("SELECT set_config('scrm.wecom_tag_origin', '', true)"))


@dataclass(frozen=True)
class TagToPush:
    tag_id: int
    name: str
    wecom_tag_id: str | None
    group_id: int
    group_name: str
    group_wecom_id: str | None
    mirrored: bool
    wecom_name: str | None  # the tag's name as WeCom last showed it


async def tag_to_push(session: AsyncSession, tenant_id: uuid.UUID, tag_id: int) -> TagToPush | None:
    row = (
        await session.execute(
            text(
                """
                SELECT t.id AS tag_id, t.name, t.wecom_tag_id, g.id AS group_id,
                       g.name AS group_name, g.wecom_group_id AS group_wecom_id,
                       g.mirror_to_wecom AS mirrored, m.name AS wecom_name
                  FROM tags t
                  JOIN tag_groups g ON g.id = t.group_id
                  LEFT JOIN wecom_corp_tags m
                         ON m.tenant_id = t.tenant_id AND m.wecom_id = t.wecom_tag_id
                 WHERE t.tenant_id = :t AND t.id = :id
                """
            ),
            {"t": tenant_id, "id": tag_id},
        )
    ).first()
    return None if row is None else TagToPush(**dict(row._mapping))


@dataclass(frozen=True)
class GroupToPush:
    group_id: int
    name: str
    wecom_group_id: str | None
    mirrored: bool
    wecom_name: str | None


async def group_to_push(
    session: AsyncSession, tenant_id: uuid.UUID, group_id: int
) -> GroupToPush | None:
    row = (
        await session.execute(
            text(
                """
                SELECT g.id AS group_id, g.name, g.wecom_group_id, g.mirror_to_wecom AS mirrored,
                       m.name AS wecom_name
                  FROM tag_groups g
                  LEFT JOIN wecom_corp_tags m
                         ON m.tenant_id = g.tenant_id AND m.wecom_id = g.wecom_group_id
                 WHERE g.tenant_id = :t AND g.id = :id
                """
            ),
            {"t": tenant_id, "id": group_id},
        )
    ).first()
    return None if row is None else GroupToPush(**dict(row._mapping))


async def linked_tag_count(session: AsyncSession, tenant_id: uuid.UUID) -> int:
    """How many of the corp's tags WeCom holds, as last seen."""
    return int(
        await session.scalar(
            text("SELECT count(*) FROM wecom_corp_tags WHERE tenant_id = :t AND kind = 'tag'"),
            {"t": tenant_id},
        )
        or 0
    )


async def link_pushed_tag(
    session: AsyncSession, tenant_id: uuid.UUID, tag_id: int, group_id: int, group: CorpTagGroup
) -> None:
    """Store the WeCom ids add_corp_tag gave a tag (and its group, if new there)."""
    [tag] = group.tags
    await mark_origin_wecom(session)
    await session.execute(
        text(
            """
            UPDATE tag_groups SET wecom_group_id = :gid, updated_at = now()
             WHERE tenant_id = :t AND id = :g AND wecom_group_id IS DISTINCT FROM :gid
            """
        ),
        {"t": tenant_id, "g": group_id, "gid": group.wecom_id},
    )
    await session.execute(
        text(
            "UPDATE tags SET wecom_tag_id = :tid, updated_at = now()"
            " WHERE tenant_id = :t AND id = :id"
        ),
        {"t": tenant_id, "id": tag_id, "tid": tag.wecom_id},
    )
    await upsert_corp_tags(session, tenant_id, [group], whole_groups=False)
    await session.execute(
        text(
            """
            UPDATE wecom_corp_tags SET group_id = :g WHERE tenant_id = :t AND wecom_id = :gid
            """
        ),
        {"t": tenant_id, "g": group_id, "gid": group.wecom_id},
    )
    await session.execute(
        text("UPDATE wecom_corp_tags SET tag_id = :id WHERE tenant_id = :t AND wecom_id = :tid"),
        {"t": tenant_id, "id": tag_id, "tid": tag.wecom_id},
    )
    await end_origin_wecom(session)


async def set_wecom_name(
    session: AsyncSession, tenant_id: uuid.UUID, wecom_id: str, name: str
) -> None:
    await session.execute(
        text(
            "UPDATE wecom_corp_tags SET name = :n, synced_at = now()"
            " WHERE tenant_id = :t AND wecom_id = :id"
        ),
        {"t": tenant_id, "id": wecom_id, "n": name},
    )


async def forget_corp_tags(
    session: AsyncSession, tenant_id: uuid.UUID, wecom_ids: Collection[str]
) -> None:
    """WeCom no longer has these tags or groups (a group's tags go with it)."""
    await session.execute(
        text(
            """
            DELETE FROM wecom_corp_tags
             WHERE tenant_id = :t
               AND (wecom_id = ANY(CAST(:ids AS text[]))
                    OR wecom_group_id = ANY(CAST(:ids AS text[])))
            """
        ),
        {"t": tenant_id, "ids": list(wecom_ids)},
    )


async def upsert_corp_tags(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    groups: Sequence[CorpTagGroup],
    *,
    whole_groups: bool,
) -> None:
    """Store the groups and tags as WeCom answered them (`whole_groups`: the answer
    held every tag of each group, so tags it lacks are gone)."""
    ids: list[str] = []
    kinds: list[str] = []
    parents: list[str | None] = []
    names: list[str] = []
    orders: list[int] = []
    times: list[int | None] = []
    for group in groups:
        ids.append(group.wecom_id)
        kinds.append("group")
        parents.append(None)
        names.append(group.name[:64])
        orders.append(group.order)
        times.append(group.create_time)
        for tag in group.tags:
            ids.append(tag.wecom_id)
            kinds.append("tag")
            parents.append(group.wecom_id)
            names.append(tag.name[:64])
            orders.append(tag.order)
            times.append(tag.create_time)
    if not ids:
        return
    await session.execute(
        text(
            """
            INSERT INTO wecom_corp_tags (tenant_id, wecom_id, kind, wecom_group_id, name,
                                         sort_order, created_time)
            SELECT :t, x.id, x.kind, x.parent, x.name, x.ord, x.ct
              FROM unnest(CAST(:ids AS text[]), CAST(:kinds AS text[]),
                          CAST(:parents AS text[]), CAST(:names AS text[]),
                          CAST(:orders AS bigint[]), CAST(:times AS bigint[]))
                   AS x(id, kind, parent, name, ord, ct)
            ON CONFLICT (tenant_id, wecom_id) DO UPDATE
               SET kind = EXCLUDED.kind, wecom_group_id = EXCLUDED.wecom_group_id,
                   name = EXCLUDED.name, sort_order = EXCLUDED.sort_order,
                   created_time = EXCLUDED.created_time, synced_at = now()
            """
        ),
        {
            "t": tenant_id,
            "ids": ids,
            "kinds": kinds,
            "parents": parents,
            "names": names,
            "orders": orders,
            "times": times,
        },
    )
    if whole_groups:
        await session.execute(
            text(
                """
                DELETE FROM wecom_corp_tags
                 WHERE tenant_id = :t AND kind = 'tag'
                   AND wecom_group_id = ANY(CAST(:groups AS text[]))
                   AND NOT wecom_id = ANY(CAST(:ids AS text[]))
                """
            ),
            {"t": tenant_id, "groups": [g.wecom_id for g in groups], "ids": ids},
        )


async def set_orders(
    session: AsyncSession, tenant_id: uuid.UUID, groups: Sequence[CorpTagGroup]
) -> int:
    """Store only the order of these groups and their tags; how many changed."""
    ids = [g.wecom_id for g in groups] + [t.wecom_id for g in groups for t in g.tags]
    orders = [g.order for g in groups] + [t.order for g in groups for t in g.tags]
    if not ids:
        return 0
    result = await session.execute(
        text(
            """
            UPDATE wecom_corp_tags m SET sort_order = x.ord, synced_at = now()
              FROM unnest(CAST(:ids AS text[]), CAST(:orders AS bigint[])) AS x(id, ord)
             WHERE m.tenant_id = :t AND m.wecom_id = x.id AND m.sort_order <> x.ord
            """
        ),
        {"t": tenant_id, "ids": ids, "orders": orders},
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


@dataclass
class AppliedDefinitions:
    groups_created: int = 0
    groups_linked: int = 0
    groups_renamed: int = 0
    tags_created: int = 0
    tags_linked: int = 0
    tags_renamed: int = 0
    linked_group_ids: list[int] | None = None


async def apply_definitions(
    session: AsyncSession, tenant_id: uuid.UUID, groups: Sequence[CorpTagGroup]
) -> AppliedDefinitions:
    """Local groups and tags for WeCom's: linked by WeCom id, else by name (a local group
    or tag of that name becomes the mirror of WeCom's), renamed when WeCom's name
    changed (unless another local one holds it), created when new. Never recreated:
    local ids stay."""
    out = AppliedDefinitions()
    if not groups:
        out.linked_group_ids = []
        return out
    g_ids = [g.wecom_id for g in groups]
    g_names = [g.name for g in groups]
    params = {"t": tenant_id, "ids": g_ids, "names": g_names}
    linked = await session.execute(
        text(
            """
            UPDATE tag_groups g SET wecom_group_id = x.id, mirror_to_wecom = true,
                   updated_at = now()
              FROM unnest(CAST(:ids AS text[]), CAST(:names AS text[])) AS x(id, name)
             WHERE g.tenant_id = :t AND g.wecom_group_id IS NULL AND g.name = x.name
               AND NOT EXISTS (SELECT 1 FROM tag_groups o
                                WHERE o.tenant_id = :t AND o.wecom_group_id = x.id)
            RETURNING g.id
            """
        ),
        params,
    )
    out.linked_group_ids = [int(r[0]) for r in linked]
    out.groups_linked = len(out.linked_group_ids)
    renamed = await session.execute(
        text(
            """
            UPDATE tag_groups g SET name = x.name, updated_at = now()
              FROM unnest(CAST(:ids AS text[]), CAST(:names AS text[])) AS x(id, name)
             WHERE g.tenant_id = :t AND g.wecom_group_id = x.id AND g.name <> x.name
               AND NOT EXISTS (SELECT 1 FROM tag_groups o
                                WHERE o.tenant_id = :t AND o.name = x.name)
            """
        ),
        params,
    )
    out.groups_renamed = int(renamed.rowcount)  # type: ignore[attr-defined]
    created = await session.execute(
        text(
            """
            INSERT INTO tag_groups (tenant_id, name, kind, mirror_to_wecom, wecom_group_id)
            SELECT :t, x.name, 'custom', true, x.id
              FROM unnest(CAST(:ids AS text[]), CAST(:names AS text[])) AS x(id, name)
             WHERE NOT EXISTS (SELECT 1 FROM tag_groups o
                                WHERE o.tenant_id = :t AND o.wecom_group_id = x.id)
            ON CONFLICT ON CONSTRAINT uq_tag_groups_name DO NOTHING
            """
        ),
        params,
    )
    out.groups_created = int(created.rowcount)  # type: ignore[attr-defined]

    tags = [t for g in groups for t in g.tags]
    t_params = {
        "t": tenant_id,
        "ids": [t.wecom_id for t in tags],
        "groups": [t.group_wecom_id for t in tags],
        "names": [t.name for t in tags],
    }
    source = """unnest(CAST(:ids AS text[]), CAST(:groups AS text[]), CAST(:names AS text[]))
                AS x(id, gid, name)
           JOIN tag_groups g ON g.tenant_id = :t AND g.wecom_group_id = x.gid"""
    if tags:
        linked_tags = await session.execute(
            text(
                f"""
                UPDATE tags t SET wecom_tag_id = x.id, updated_at = now()
                  FROM {source}
                 WHERE t.tenant_id = :t AND t.group_id = g.id AND t.wecom_tag_id IS NULL
                   AND t.name = x.name
                   AND NOT EXISTS (SELECT 1 FROM tags o
                                    WHERE o.tenant_id = :t AND o.wecom_tag_id = x.id)
                """
            ),
            t_params,
        )
        out.tags_linked = int(linked_tags.rowcount)  # type: ignore[attr-defined]
        renamed_tags = await session.execute(
            text(
                f"""
                UPDATE tags t SET name = x.name, updated_at = now()
                  FROM {source}
                 WHERE t.tenant_id = :t AND t.wecom_tag_id = x.id AND t.name <> x.name
                   AND NOT EXISTS (SELECT 1 FROM tags o
                                    WHERE o.tenant_id = :t AND o.group_id = t.group_id
                                      AND o.name = x.name)
                """
            ),
            t_params,
        )
        out.tags_renamed = int(renamed_tags.rowcount)  # type: ignore[attr-defined]
        created_tags = await session.execute(
            text(
                f"""
                INSERT INTO tags (tenant_id, group_id, name, wecom_tag_id)
                SELECT :t, g.id, x.name, x.id
                  FROM {source}
                 WHERE NOT EXISTS (SELECT 1 FROM tags o
                                    WHERE o.tenant_id = :t AND o.wecom_tag_id = x.id)
                ON CONFLICT ON CONSTRAINT uq_tags_name DO NOTHING
                """
            ),
            t_params,
        )
        out.tags_created = int(created_tags.rowcount)  # type: ignore[attr-defined]
    await session.execute(
        text(
            """
            UPDATE wecom_corp_tags m
               SET group_id = (SELECT g.id FROM tag_groups g
                                WHERE g.tenant_id = m.tenant_id AND g.wecom_group_id = m.wecom_id)
             WHERE m.tenant_id = :t AND m.kind = 'group' AND m.wecom_id = ANY(CAST(:ids AS text[]))
            """
        ),
        {"t": tenant_id, "ids": g_ids},
    )
    await session.execute(
        text(
            """
            UPDATE wecom_corp_tags m
               SET tag_id = (SELECT t.id FROM tags t
                              WHERE t.tenant_id = m.tenant_id AND t.wecom_tag_id = m.wecom_id)
             WHERE m.tenant_id = :t AND m.kind = 'tag' AND m.wecom_id = ANY(CAST(:ids AS text[]))
            """
        ),
        {"t": tenant_id, "ids": [t.wecom_id for t in tags]},
    )
    return out


async def local_ids_missing_from(
    session: AsyncSession, tenant_id: uuid.UUID, wecom_ids: Collection[str]
) -> tuple[list[int], list[int]]:
    """(group ids, tag ids) of local mirrors whose WeCom id is not among `wecom_ids`."""
    params = {"t": tenant_id, "ids": list(wecom_ids)}
    groups = await session.scalars(
        text(
            "SELECT id FROM tag_groups WHERE tenant_id = :t AND wecom_group_id IS NOT NULL"
            " AND NOT wecom_group_id = ANY(CAST(:ids AS text[]))"
        ),
        params,
    )
    tags = await session.scalars(
        text(
            "SELECT id FROM tags WHERE tenant_id = :t AND wecom_tag_id IS NOT NULL"
            " AND NOT wecom_tag_id = ANY(CAST(:ids AS text[]))"
        ),
        params,
    )
    return [int(g) for g in groups], [int(t) for t in tags]


async def linked_tags_missing_in_groups(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    wecom_group_ids: Collection[str],
    wecom_tag_ids: Collection[str],
) -> list[int]:
    """Local tags of these WeCom groups whose WeCom id is not among `wecom_tag_ids`."""
    rows = await session.scalars(
        text(
            """
            SELECT t.id FROM tags t JOIN tag_groups g ON g.id = t.group_id
             WHERE t.tenant_id = :t AND g.wecom_group_id = ANY(CAST(:groups AS text[]))
               AND t.wecom_tag_id IS NOT NULL AND NOT t.wecom_tag_id = ANY(CAST(:tags AS text[]))
            """
        ),
        {"t": tenant_id, "groups": list(wecom_group_ids), "tags": list(wecom_tag_ids)},
    )
    return [int(r) for r in rows]


async def local_ids_of(
    session: AsyncSession, tenant_id: uuid.UUID, wecom_ids: Collection[str]
) -> tuple[list[int], list[int]]:
    """(group ids, tag ids) of the local mirrors of these WeCom ids."""
    params = {"t": tenant_id, "ids": list(wecom_ids)}
    groups = await session.scalars(
        text(
            "SELECT id FROM tag_groups WHERE tenant_id = :t"
            " AND wecom_group_id = ANY(CAST(:ids AS text[]))"
        ),
        params,
    )
    tags = await session.scalars(
        text(
            "SELECT id FROM tags WHERE tenant_id = :t AND wecom_tag_id = ANY(CAST(:ids AS text[]))"
        ),
        params,
    )
    return [int(g) for g in groups], [int(t) for t in tags]


async def holders(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    group_ids: Collection[int],
    tag_ids: Collection[int],
) -> list[tuple[uuid.UUID, int]]:
    """(contact, tag) of every contact tag of these tags, or of any tag of these groups."""
    rows = await session.execute(
        text(
            """
            SELECT ct.contact_id, ct.tag_id FROM contact_tags ct JOIN tags t ON t.id = ct.tag_id
             WHERE ct.tenant_id = :t
               AND (t.id = ANY(CAST(:tags AS bigint[]))
                    OR t.group_id = ANY(CAST(:groups AS bigint[])))
             ORDER BY ct.contact_id, ct.tag_id
            """
        ),
        {"t": tenant_id, "tags": list(tag_ids), "groups": list(group_ids)},
    )
    return [(r.contact_id, int(r.tag_id)) for r in rows]


async def delete_definitions(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    group_ids: Collection[int],
    tag_ids: Collection[int],
) -> None:
    await session.execute(
        text("DELETE FROM tags WHERE tenant_id = :t AND id = ANY(CAST(:ids AS bigint[]))"),
        {"t": tenant_id, "ids": list(tag_ids)},
    )
    await session.execute(
        text("DELETE FROM tag_groups WHERE tenant_id = :t AND id = ANY(CAST(:ids AS bigint[]))"),
        {"t": tenant_id, "ids": list(group_ids)},
    )


# --- contact tags and mark_tag -----------------------------------------------------------


@dataclass(frozen=True)
class MarkTarget:
    contact_id: uuid.UUID
    tag_id: int
    wecom_tag_id: str | None
    mirrored: bool
    held: bool


async def mark_targets(
    session: AsyncSession, tenant_id: uuid.UUID, pairs: Sequence[tuple[uuid.UUID, int]]
) -> list[MarkTarget]:
    """For each (contact, tag): the tag's WeCom id, whether its group is mirrored, and
    whether the contact holds the tag now."""
    if not pairs:
        return []
    rows = await session.execute(
        text(
            """
            SELECT x.contact_id, x.tag_id, t.wecom_tag_id,
                   coalesce(g.mirror_to_wecom, false) AS mirrored,
                   EXISTS (SELECT 1 FROM contact_tags ct
                            WHERE ct.tenant_id = :t AND ct.contact_id = x.contact_id
                              AND ct.tag_id = x.tag_id) AS held
              FROM unnest(CAST(:contacts AS uuid[]), CAST(:tags AS bigint[]))
                   AS x(contact_id, tag_id)
              LEFT JOIN tags t ON t.tenant_id = :t AND t.id = x.tag_id
              LEFT JOIN tag_groups g ON g.id = t.group_id
            """
        ),
        {"t": tenant_id, "contacts": [p[0] for p in pairs], "tags": [p[1] for p in pairs]},
    )
    return [MarkTarget(**dict(r._mapping)) for r in rows]


async def mirrored_tags_by_wecom_id(
    session: AsyncSession, tenant_id: uuid.UUID, wecom_ids: Collection[str]
) -> dict[str, int]:
    rows = await session.execute(
        text(
            """
            SELECT t.wecom_tag_id, t.id FROM tags t JOIN tag_groups g ON g.id = t.group_id
             WHERE t.tenant_id = :t AND g.mirror_to_wecom
               AND t.wecom_tag_id = ANY(CAST(:ids AS text[]))
            """
        ),
        {"t": tenant_id, "ids": list(wecom_ids)},
    )
    return {str(r[0]): int(r[1]) for r in rows}


async def has_mirrored_tags(session: AsyncSession, tenant_id: uuid.UUID) -> bool:
    """Whether any tag of a mirrored group is in WeCom."""
    found = await session.scalar(
        text(
            """
            SELECT EXISTS (SELECT 1 FROM tags t JOIN tag_groups g ON g.id = t.group_id
                            WHERE t.tenant_id = :t AND g.mirror_to_wecom
                              AND t.wecom_tag_id IS NOT NULL)
            """
        ),
        {"t": tenant_id},
    )
    return bool(found)


async def contact_mirrored_tags(
    session: AsyncSession, tenant_id: uuid.UUID, contact_id: uuid.UUID
) -> set[int]:
    """The contact's tags that WeCom holds too (mirrored groups, tags with a WeCom id)."""
    rows = await session.scalars(
        text(
            """
            SELECT ct.tag_id FROM contact_tags ct
              JOIN tags t ON t.id = ct.tag_id JOIN tag_groups g ON g.id = t.group_id
             WHERE ct.tenant_id = :t AND ct.contact_id = :c AND g.mirror_to_wecom
               AND t.wecom_tag_id IS NOT NULL
            """
        ),
        {"t": tenant_id, "c": contact_id},
    )
    return {int(r) for r in rows}


async def mirrored_tag_ids(
    session: AsyncSession, tenant_id: uuid.UUID, tag_ids: Collection[int]
) -> set[int]:
    """Those of these tags whose group is mirrored to WeCom."""
    if not tag_ids:
        return set()
    rows = await session.scalars(
        text(
            """
            SELECT t.id FROM tags t JOIN tag_groups g ON g.id = t.group_id
             WHERE t.tenant_id = :t AND t.id = ANY(CAST(:ids AS bigint[])) AND g.mirror_to_wecom
            """
        ),
        {"t": tenant_id, "ids": list(tag_ids)},
    )
    return {int(r) for r in rows}


# --- the corp tags as the API shows them -------------------------------------------------


async def corp_tags(session: AsyncSession, tenant_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = await session.execute(
        text(
            """
            SELECT wecom_id, kind, wecom_group_id, name, sort_order, group_id, tag_id, synced_at
              FROM wecom_corp_tags WHERE tenant_id = :t
             ORDER BY kind DESC, sort_order DESC, wecom_id
            """
        ),
        {"t": tenant_id},
    )
    return [dict(r._mapping) for r in rows]
