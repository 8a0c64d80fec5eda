"""SQL of the WeCom corp-tag mirror: the corp tags as WeCom showed them, and what
mirroring reads and writes of tag groups, tags and contact tags (the op queue's own
statements are in ops_repository.py)."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.tagging.wecom.corp_tags import CorpTagGroup

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
