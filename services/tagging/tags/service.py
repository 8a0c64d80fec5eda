"""Rules of tag groups, tags and the tags on contacts. Functions take a session and
plain values; every change of contact tags goes through writes.apply_tag_writes (or
the repository's set-based removals), then re-evaluates the segments at once."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from sqlalchemy.ext.asyncio import AsyncSession

from services.tagging import clock
from services.tagging.facts import Changes, tag_fact
from services.tagging.segments import live
from services.tagging.tags import repository
from services.tagging.tags.exceptions import (
    ContactNotFound,
    ContactTagNotFound,
    TagGroupNameTaken,
    TagGroupNotFound,
    TagNameTaken,
    TagNotFound,
    TooManyTags,
    UnknownSegment,
    UnknownTag,
    UnknownTagGroup,
)
from services.tagging.tags.writes import TagWrite, TagWriteResult, apply_tag_writes
from services.users import contact_status
from shared.apikeys import Principal

MAX_TAGS_PER_TENANT = 10_000
_DECAY_FIELDS = ("half_life_days", "floor", "decay_manual")


# --- groups ---------------------------------------------------------------------------


async def create_group(session: AsyncSession, tenant_id: uuid.UUID, values: dict[str, Any]) -> int:
    group_id = await repository.insert_group(session, tenant_id, values)
    if group_id is None:
        raise TagGroupNameTaken(values["name"])
    return group_id


async def list_groups(session: AsyncSession, tenant_id: uuid.UUID) -> list[dict[str, Any]]:
    return await repository.list_groups(session, tenant_id)


async def get_group(session: AsyncSession, tenant_id: uuid.UUID, group_id: int) -> dict[str, Any]:
    group = await repository.get_group(session, tenant_id, group_id)
    if group is None:
        raise TagGroupNotFound(group_id)
    return group


async def update_group(
    session: AsyncSession, tenant_id: uuid.UUID, group_id: int, changes: dict[str, Any]
) -> dict[str, Any]:
    """Change a group; new decay settings re-anchor the tags its contacts hold (their
    current weight decays at the new rate from now; past-due drops go at the next
    sweep)."""
    group = await repository.get_group(session, tenant_id, group_id, lock="FOR NO KEY UPDATE")
    if group is None:
        raise TagGroupNotFound(group_id)
    changed = {k: v for k, v in changes.items() if group[k] != v}
    if not changed:
        return group
    if not await repository.update_group(session, tenant_id, group_id, changed):
        raise TagGroupNameTaken(changed["name"])
    if any(name in changed for name in _DECAY_FIELDS):
        settings = {name: changed.get(name, group[name]) for name in _DECAY_FIELDS}
        await repository.reanchor_group(session, tenant_id, group_id, now=clock.now(), **settings)
    return await get_group(session, tenant_id, group_id)


async def delete_group(session: AsyncSession, tenant_id: uuid.UUID, group_id: int) -> None:
    """Delete a group with its tags; every contact holding one loses it (tag.removed,
    reason "deleted")."""
    if await repository.get_group(session, tenant_id, group_id, lock="FOR UPDATE") is None:
        raise TagGroupNotFound(group_id)
    tag_ids = await repository.group_tag_ids(session, tenant_id, group_id)
    await _remove_holders(session, tenant_id, tag_ids)
    await repository.delete_group(session, tenant_id, group_id)


async def _remove_holders(session: AsyncSession, tenant_id: uuid.UUID, tag_ids: list[int]) -> None:
    if not tag_ids:
        return
    now = clock.now()
    removed = await repository.remove_tag_holders(session, tenant_id, tag_ids, now)
    changes = Changes()
    for contact_id, tag_id in removed:
        changes.add(tenant_id, contact_id, tag_fact(tag_id))
    await live.reevaluate(session, changes, now)


# --- tags -----------------------------------------------------------------------------


async def create_tag(session: AsyncSession, tenant_id: uuid.UUID, group_id: int, name: str) -> int:
    # A key share: the group is not deleted under the new tag.
    if await repository.get_group(session, tenant_id, group_id, lock="FOR KEY SHARE") is None:
        raise UnknownTagGroup(group_id)
    if await repository.count_tags_locked(session, tenant_id) >= MAX_TAGS_PER_TENANT:
        raise TooManyTags(MAX_TAGS_PER_TENANT)
    tag_id = await repository.insert_tag(session, tenant_id, group_id, name)
    if tag_id is None:
        raise TagNameTaken(name)
    return tag_id


async def get_tag(session: AsyncSession, tenant_id: uuid.UUID, tag_id: int) -> dict[str, Any]:
    tag = await repository.get_tag(session, tenant_id, tag_id)
    if tag is None:
        raise TagNotFound(tag_id)
    return tag


async def list_tags(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    *,
    group_id: int | None,
    after: int | None,
    limit: int,
) -> tuple[list[dict[str, Any]], str | None]:
    items = await repository.list_tags(
        session, tenant_id, group_id=group_id, after=after, limit=limit
    )
    return items, (str(items[-1]["id"]) if len(items) == limit else None)


async def rename_tag(
    session: AsyncSession, tenant_id: uuid.UUID, tag_id: int, name: str
) -> dict[str, Any]:
    tag = await repository.get_tag(session, tenant_id, tag_id, lock="FOR NO KEY UPDATE")
    if tag is None:
        raise TagNotFound(tag_id)
    if tag["name"] != name and not await repository.rename_tag(session, tenant_id, tag_id, name):
        raise TagNameTaken(name)
    return await get_tag(session, tenant_id, tag_id)


async def delete_tag(session: AsyncSession, tenant_id: uuid.UUID, tag_id: int) -> None:
    """Delete a tag; every contact holding it loses it (tag.removed, reason "deleted")."""
    if await repository.get_tag(session, tenant_id, tag_id, lock="FOR UPDATE") is None:
        raise TagNotFound(tag_id)
    await _remove_holders(session, tenant_id, [tag_id])
    await repository.delete_tags(session, tenant_id, [tag_id])


async def tag_holders(
    session: AsyncSession,
    principal: Principal,
    tag_id: int,
    *,
    after: uuid.UUID | None,
    limit: int,
) -> tuple[list[dict[str, Any]], uuid.UUID | None]:
    """The live contacts holding a tag, a page at a time; a staff key sees only the
    contacts its staff member owns."""
    tenant_id = principal.tenant
    if await repository.get_tag(session, tenant_id, tag_id) is None:
        raise TagNotFound(tag_id)
    owner = (principal.staff_userid or "") if principal.role == "staff" else None
    items = await repository.tag_holders(
        session, tenant_id, tag_id, clock.now(), owner_staff=owner, after=after, limit=limit
    )
    return items, (items[-1]["contact_id"] if len(items) == limit else None)


# --- a contact's tags -------------------------------------------------------------------


async def require_live_contact(
    session: AsyncSession, tenant_id: uuid.UUID, contact_id: uuid.UUID
) -> None:
    """Tags are a live contact's: 404 for a merged or erased one. A contact the read
    model does not know yet (its events still on their way) is asked of the users
    service."""
    status = await repository.profile_status(session, tenant_id, contact_id)
    if status is None:
        found = await contact_status(session, tenant_id, contact_id)
        status = "live" if found == "active" else found.partition(":")[0]
    if status != "live":
        raise ContactNotFound(status)


async def contact_tags(
    session: AsyncSession, tenant_id: uuid.UUID, contact_id: uuid.UUID, *, history: bool
) -> list[dict[str, Any]]:
    """The contact's tags with their current weights (and, on request, their history)."""
    await require_live_contact(session, tenant_id, contact_id)
    items = await repository.contact_tags(session, tenant_id, contact_id, clock.now())
    if history and items:
        by_tag: dict[int, list[dict[str, Any]]] = {item["tag_id"]: [] for item in items}
        for row in await repository.contact_history(session, tenant_id, contact_id, list(by_tag)):
            by_tag[row.pop("tag_id")].append(row)
        for item in items:
            item["history"] = by_tag[item["tag_id"]]
    return items


async def tag_contact(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    contact_id: uuid.UUID,
    tag_id: int,
    weight: float | None,
) -> tuple[dict[str, Any], bool]:
    """Tag the contact by hand: (the contact tag, whether it was added)."""
    await require_live_contact(session, tenant_id, contact_id)
    if await repository.get_tag(session, tenant_id, tag_id) is None:
        raise UnknownTag(tag_id)
    mode: Literal["set", "ensure"] = "ensure" if weight is None else "set"
    result = await _write(session, tenant_id, [TagWrite(contact_id, tag_id, mode, weight)])
    items = await repository.contact_tags(session, tenant_id, contact_id, clock.now())
    return next(i for i in items if i["tag_id"] == tag_id), result.added > 0


async def untag_contact(
    session: AsyncSession, tenant_id: uuid.UUID, contact_id: uuid.UUID, tag_id: int
) -> None:
    await require_live_contact(session, tenant_id, contact_id)
    result = await _write(session, tenant_id, [TagWrite(contact_id, tag_id, "remove")])
    if result.removed == 0:
        raise ContactTagNotFound(tag_id)


async def _write(
    session: AsyncSession, tenant_id: uuid.UUID, writes: Sequence[TagWrite]
) -> TagWriteResult:
    now = clock.now()
    changes = Changes()
    result = await apply_tag_writes(session, tenant_id, writes, changes, now)
    await live.reevaluate(session, changes, now)
    return result


# --- bulk -------------------------------------------------------------------------------


async def bulk(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    tag_id: int,
    *,
    contact_ids: Sequence[uuid.UUID] | None,
    segment_id: int | None,
    mode: Literal["set", "ensure", "remove"],
    weight: float | None = None,
    source: str = "manual",
    weights: Sequence[float | None] | None = None,
) -> dict[str, Any]:
    """Tag (or untag) many contacts at once, set-based and idempotent: a list of ids
    (those the read model does not know as live come back as `unknown`) or a segment's
    members. `weights`, when given, is a weight per id (an import's column)."""
    if await repository.get_tag(session, tenant_id, tag_id) is None:
        raise TagNotFound(tag_id)
    unknown: list[uuid.UUID] = []
    if segment_id is not None:
        if not await repository.segment_exists(session, tenant_id, segment_id):
            raise UnknownSegment(segment_id)
        targets = [
            (c, weight) for c in await repository.segment_member_ids(session, tenant_id, segment_id)
        ]
    else:
        assert contact_ids is not None
        per_id = weights if weights is not None else [weight] * len(contact_ids)
        latest: dict[uuid.UUID, float | None] = {}
        for contact_id, each in zip(contact_ids, per_id, strict=True):
            latest[contact_id] = each
        known = await repository.live_contacts(session, tenant_id, list(latest))
        unknown = [c for c in latest if c not in known]
        targets = [(c, w) for c, w in latest.items() if c in known]
    writes = [
        TagWrite(
            contact_id,
            tag_id,
            "remove" if mode == "remove" else ("ensure" if w is None else "set"),
            w,
            source=source,
        )
        for contact_id, w in targets
    ]
    result = await _write(session, tenant_id, writes)
    return {
        "added": result.added,
        "updated": result.updated,
        "removed": result.removed,
        "unchanged": result.unchanged,
        "unknown": unknown,
    }


async def sweep_decayed(session: AsyncSession, now: datetime, *, batch: int, rounds: int) -> int:
    """Remove contact tags whose decayed weight fell below their group's floor by `now`
    (tag.removed, reason "decayed"), up to `batch` x `rounds` rows; how many."""
    changes = Changes()
    total = 0
    for _ in range(rounds):
        removed = await repository.sweep_decayed(session, now, batch)
        for tenant_id, contact_id, tag_id in removed:
            changes.add(tenant_id, contact_id, tag_fact(tag_id))
        total += len(removed)
        if len(removed) < batch:
            break
    await live.reevaluate(session, changes, now)
    return total
