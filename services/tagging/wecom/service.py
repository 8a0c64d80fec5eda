"""Business rules of the WeCom corp-tag mirror.

What goes to WeCom (definitions of mirrored groups, contact tags as mark_tag) and
what comes back (syncs, change_external_tag callbacks, a customer's tags after
edit_external_contact) is an op of the queue (queue.py), never a call on a request
or in an event handler. An op is planned from the database when it runs
(jobs.py), so it sends what is true then: a contact's mark sends whether it holds
each tag now, a push sends the tag's current name.

Local ids are stable: WeCom's groups and tags are matched by the WeCom ids stored
in tag_groups.wecom_group_id / tags.wecom_tag_id (or, the first time, by name),
so a sync renames and removes what changed in WeCom and never recreates a tag.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from services.tagging.facts import Changes
from services.tagging.segments import live
from services.tagging.tags.writes import TagWrite, apply_tag_writes
from services.tagging.wecom import ops_repository as ops_repo
from services.tagging.wecom import repository as repo
from services.tagging.wecom.corp_tags import CorpTagGroup
from shared.errors import NotFound, ScrmError
from shared.events import Event

MAX_NAME = 30
MAX_CORP_TAGS = 10_000
CORP = "corp"


class OpNotFailed(ScrmError):
    status_code = 409
    code = "op_not_failed"


# --- enqueueing -----------------------------------------------------------------------------


async def request_sync(session: AsyncSession, tenant_id: uuid.UUID, now: datetime) -> ops_repo.Op:
    """A full sync of the corp's tags, queued (a pending one is reused)."""
    op_id = await ops_repo.enqueue_op(
        session, tenant_id, "sync", {}, serial_key=CORP, coalesce_key="sync", now=now
    )
    found = await ops_repo.get_op(session, tenant_id, op_id)
    assert found is not None
    return found


async def enqueue_contact_marks(
    session: AsyncSession, events: Sequence[Event], now: datetime
) -> None:
    """tag.added / tag.removed of mirrored tags, made here (not from WeCom): one mark op
    per contact, joining its pending one."""
    touched: dict[uuid.UUID, dict[uuid.UUID, set[int]]] = defaultdict(lambda: defaultdict(set))
    for event in events:
        payload = event.payload
        if event.tenant_id is None:
            continue
        if event.type == "tag.added" and payload.get("source") == "wecom":
            continue
        if event.type == "tag.removed" and payload.get("reason") == "wecom":
            continue
        try:
            contact_id = uuid.UUID(str(payload["contact_id"]))
            tag_id = int(payload["tag_id"])
        except (KeyError, TypeError, ValueError):
            continue
        touched[event.tenant_id][contact_id].add(tag_id)
    for tenant_id, by_contact in touched.items():
        mirrored = await repo.mirrored_tag_ids(
            session, tenant_id, {t for tags in by_contact.values() for t in tags}
        )
        marks = {c: tags & mirrored for c, tags in by_contact.items() if tags & mirrored}
        await ops_repo.enqueue_marks(session, tenant_id, marks, now)


async def apply_tag_changed(
    session: AsyncSession, events: Sequence[Event], changes: Changes, now: datetime
) -> None:
    """change_external_tag callbacks (wecom.tag_changed): a created or updated tag or group
    is fetched (by id, through the queue), a deleted one removed here at once, a
    reorder refetches that group's order (every group's when the id is empty). A
    corp's first callback also queues its initial full sync."""
    deleted: dict[uuid.UUID, set[str]] = defaultdict(set)
    queued: dict[uuid.UUID, list[tuple[str, dict[str, Any], str]]] = defaultdict(list)
    for event in events:
        if event.tenant_id is None:
            continue
        payload = event.payload
        change = payload.get("change_type")
        wecom_id = str(payload.get("id") or "")
        is_group = payload.get("tag_type") == "tag_group"
        if change in ("create", "update") and wecom_id:
            kind = "group_ids" if is_group else "tag_ids"
            queued[event.tenant_id].append(
                ("fetch", {kind: [wecom_id]}, f"fetch:{kind}:{wecom_id}")
            )
        elif change == "delete" and wecom_id:
            deleted[event.tenant_id].add(wecom_id)
        elif change == "shuffle":
            # WeCom names the group whose tags moved, or none when the groups moved.
            queued[event.tenant_id].append(
                ("order", {"group_ids": [wecom_id] if wecom_id else []}, f"order:{wecom_id or '*'}")
            )
    for tenant_id in {e.tenant_id for e in events if e.tenant_id is not None}:
        # The corp's first callback brings its initial sync, if ops never asked for one.
        if not await ops_repo.sync_requested(session, tenant_id):
            queued[tenant_id].insert(0, ("sync", {}, "sync"))
    for tenant_id, ops in queued.items():
        await ops_repo.enqueue_corp_ops(session, tenant_id, ops, now)
    for tenant_id, wecom_ids in deleted.items():
        group_ids, tag_ids = await repo.local_ids_of(session, tenant_id, wecom_ids)
        await remove_local(session, tenant_id, group_ids, tag_ids, changes, now)
        await repo.forget_corp_tags(session, tenant_id, wecom_ids)


async def enqueue_refetches(session: AsyncSession, events: Sequence[Event], now: datetime) -> None:
    """contact.updated (edit_external_contact): the customer's tags are fetched again."""
    by_tenant: dict[uuid.UUID, set[uuid.UUID]] = defaultdict(set)
    for event in events:
        if event.tenant_id is None:
            continue
        try:
            by_tenant[event.tenant_id].add(uuid.UUID(str(event.payload["contact_id"])))
        except (KeyError, TypeError, ValueError):
            continue
    for tenant_id, contact_ids in by_tenant.items():
        # Without mirrored corp tags there is nothing to compare the customer's with.
        if await repo.has_mirrored_tags(session, tenant_id):
            await ops_repo.enqueue_refetches(session, tenant_id, contact_ids, now)


async def remove_local(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    group_ids: Sequence[int],
    tag_ids: Sequence[int],
    changes: Changes,
    now: datetime,
) -> int:
    """Remove local groups and tags that WeCom deleted, their contact tags first
    (tag.removed reason "wecom"); nothing is deleted back in WeCom."""
    if not group_ids and not tag_ids:
        return 0
    held = await repo.holders(session, tenant_id, group_ids, tag_ids)
    await apply_tag_writes(
        session,
        tenant_id,
        [
            TagWrite(contact, tag, "remove", source="wecom", cause={"reason": "wecom"})
            for contact, tag in held
        ],
        changes,
        now,
    )
    await repo.mark_origin_wecom(session)
    await repo.delete_definitions(session, tenant_id, group_ids, tag_ids)
    await repo.end_origin_wecom(session)
    return len(held)


# --- reading the queue -----------------------------------------------------------------------


async def list_ops(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    *,
    status: str | None,
    kind: str | None,
    cursor: int | None,
    limit: int,
) -> tuple[list[ops_repo.Op], str | None]:
    ops = await ops_repo.list_ops(
        session, tenant_id, status=status, kind=kind, after=cursor, limit=limit + 1
    )
    more = len(ops) > limit
    ops = ops[:limit]
    return ops, (str(ops[-1].id) if more and ops else None)


async def corp_tag_list(session: AsyncSession, tenant_id: uuid.UUID) -> list[dict[str, Any]]:
    """The corp's groups and tags as WeCom last showed them (groups first, larger order
    first)."""
    return await repo.corp_tags(session, tenant_id)


async def get_op(session: AsyncSession, tenant_id: uuid.UUID, op_id: int) -> ops_repo.Op:
    found = await ops_repo.get_op(session, tenant_id, op_id)
    if found is None:
        raise NotFound("no such WeCom tag operation", details={"op_id": op_id})
    return found


async def retry_op(
    session: AsyncSession, tenant_id: uuid.UUID, op_id: int, now: datetime
) -> ops_repo.Op:
    """Make a failed op due again, its attempts reset."""
    await get_op(session, tenant_id, op_id)
    if not await ops_repo.requeue_failed(session, tenant_id, op_id, now):
        raise OpNotFailed("only a failed operation can be retried", details={"op_id": op_id})
    return await get_op(session, tenant_id, op_id)


# --- applying what WeCom answered -----------------------------------------------------------


async def apply_corp_tags(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    groups: Sequence[CorpTagGroup],
    now: datetime,
    *,
    full: bool,
    whole_groups: bool = True,
) -> dict[str, Any]:
    """Make the local groups and tags match WeCom's (`full`: the whole list, so local
    mirrors missing from it were deleted in WeCom). Names over 30 characters, which
    WeCom does not make, are skipped and reported."""
    skipped = [g.wecom_id for g in groups if not g.name or len(g.name) > MAX_NAME]
    kept: list[CorpTagGroup] = []
    for group in groups:
        if group.wecom_id in skipped:
            continue
        tags = [t for t in group.tags if t.name and len(t.name) <= MAX_NAME]
        skipped += [t.wecom_id for t in group.tags if t not in tags]
        kept.append(CorpTagGroup(group.wecom_id, group.name, group.order, group.create_time, tags))
    await repo.mark_origin_wecom(session)
    await repo.upsert_corp_tags(session, tenant_id, kept, whole_groups=whole_groups)
    applied = await repo.apply_definitions(session, tenant_id, kept)
    await repo.end_origin_wecom(session)
    # Local tags of groups that were linked by name go to WeCom.
    pushed = await ops_repo.enqueue_pushes_for_unlinked(
        session, tenant_id, applied.linked_group_ids or [], now
    )
    removed_contact_tags = 0
    removed: tuple[list[int], list[int]] = ([], [])
    changes = Changes()
    if full:
        present = {g.wecom_id for g in groups} | {t.wecom_id for g in groups for t in g.tags}
        removed = await repo.local_ids_missing_from(session, tenant_id, present)
        removed_contact_tags = await remove_local(session, tenant_id, *removed, changes, now)
        await _forget_missing(session, tenant_id, present)
    elif whole_groups:
        # Each group came whole: its local tags missing from the answer are gone.
        gone = await repo.linked_tags_missing_in_groups(
            session,
            tenant_id,
            [g.wecom_id for g in groups],
            [t.wecom_id for g in groups for t in g.tags],
        )
        removed = ([], gone)
        removed_contact_tags = await remove_local(session, tenant_id, [], gone, changes, now)
    await live.reevaluate(session, changes, now)
    return {
        "groups": len(kept),
        "tags": sum(len(g.tags) for g in kept),
        "groups_created": applied.groups_created,
        "groups_linked": applied.groups_linked,
        "groups_renamed": applied.groups_renamed,
        "groups_removed": len(removed[0]),
        "tags_created": applied.tags_created,
        "tags_linked": applied.tags_linked,
        "tags_renamed": applied.tags_renamed,
        "tags_removed": len(removed[1]),
        "contact_tags_removed": removed_contact_tags,
        "tags_to_push": pushed,
        "skipped": skipped,
    }


async def _forget_missing(session: AsyncSession, tenant_id: uuid.UUID, present: set[str]) -> None:
    known = {str(row["wecom_id"]) for row in await repo.corp_tags(session, tenant_id)}
    await repo.forget_corp_tags(session, tenant_id, known - present)


async def apply_contact_corp_tags(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    contact_id: uuid.UUID,
    wecom_tag_ids: set[str],
    now: datetime,
) -> dict[str, Any]:
    """Make the contact's mirrored tags match the corp tags WeCom shows on it (source
    "wecom"); corp tags unknown here are reported, not created."""
    by_wecom_id = await repo.mirrored_tags_by_wecom_id(session, tenant_id, wecom_tag_ids)
    wanted = set(by_wecom_id.values())
    held = await repo.contact_mirrored_tags(session, tenant_id, contact_id)
    cause = {"wecom": "edit_external_contact"}
    writes = [
        TagWrite(contact_id, tag, "ensure", source="wecom", cause=cause)
        for tag in sorted(wanted - held)
    ] + [
        TagWrite(contact_id, tag, "remove", source="wecom", cause={**cause, "reason": "wecom"})
        for tag in sorted(held - wanted)
    ]
    changes = Changes()
    result = await apply_tag_writes(session, tenant_id, writes, changes, now)
    await live.reevaluate(session, changes, now)
    return {
        "added": result.added,
        "removed": result.removed,
        "unknown": sorted(wecom_tag_ids - set(by_wecom_id)),
    }
