"""The WeCom ops as they run: each claimed op is planned from the database as it is
now (`plan`), then its `Job` calls WeCom (`call`, outside any transaction) and
stores what WeCom answered (`apply`, in the transaction that marks the op done).
An op with nothing to send is `Done` at once; `OpFailed` is a failure no retry
can cure."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from services import users
from services.tagging.wecom import corp_tags
from services.tagging.wecom import ops_repository as ops_repo
from services.tagging.wecom import repository as repo
from services.tagging.wecom.corp_tags import CorpTagGroup
from services.tagging.wecom.service import (
    MAX_CORP_TAGS,
    MAX_NAME,
    apply_contact_corp_tags,
    apply_corp_tags,
)
from services.users.wecom_client import WeComApiError, WeComClient


class OpFailed(Exception):
    """An op that trying again cannot cure (it is failed at once)."""


# --- running ops: each is planned (database), called (WeCom), applied (database) ----------


@dataclass
class Done:
    """An op that needs no call (nothing to send): finished with this result."""

    result: dict[str, Any]


class Job:
    """A planned op: `call` talks to WeCom, `apply` stores what it answered."""

    async def call(self, client: WeComClient) -> Any:
        raise NotImplementedError

    async def apply(
        self, session: AsyncSession, tenant_id: uuid.UUID, answer: Any, now: datetime
    ) -> dict[str, Any]:
        return {}


@dataclass
class SyncJob(Job):
    """Every corp tag: local ones created, renamed, removed to match."""

    async def call(self, client: WeComClient) -> list[CorpTagGroup]:
        return await corp_tags.get_corp_tag_list(client)

    async def apply(
        self, session: AsyncSession, tenant_id: uuid.UUID, answer: Any, now: datetime
    ) -> dict[str, Any]:
        return await apply_corp_tags(session, tenant_id, answer, now, full=True)


@dataclass
class FetchJob(Job):
    """Some tags or groups again, after a callback said they were created or changed."""

    tag_ids: list[str]
    group_ids: list[str]

    async def call(self, client: WeComClient) -> list[CorpTagGroup] | None:
        try:
            return await corp_tags.get_corp_tag_list(
                client, tag_ids=self.tag_ids, group_ids=self.group_ids
            )
        except WeComApiError as exc:
            if exc.errcode == corp_tags.INVALID_TAG_ID:
                return None  # deleted since: its delete callback removes it
            raise

    async def apply(
        self, session: AsyncSession, tenant_id: uuid.UUID, answer: Any, now: datetime
    ) -> dict[str, Any]:
        if answer is None:
            return {"gone": self.tag_ids + self.group_ids}
        return await apply_corp_tags(
            session, tenant_id, answer, now, full=False, whole_groups=not self.tag_ids
        )


@dataclass
class OrderJob(Job):
    """The order of one group's tags, or of every group, after a reorder in WeCom."""

    group_ids: list[str]

    async def call(self, client: WeComClient) -> list[CorpTagGroup]:
        return await corp_tags.get_corp_tag_list(client, group_ids=self.group_ids)

    async def apply(
        self, session: AsyncSession, tenant_id: uuid.UUID, answer: Any, now: datetime
    ) -> dict[str, Any]:
        return {"reordered": await repo.set_orders(session, tenant_id, answer)}


@dataclass
class CreateTagJob(Job):
    tag: repo.TagToPush

    async def call(self, client: WeComClient) -> CorpTagGroup:
        try:
            return await corp_tags.add_corp_tag(
                client,
                self.tag.name,
                group_id=self.tag.group_wecom_id,
                group_name=None if self.tag.group_wecom_id else self.tag.group_name,
            )
        except WeComApiError as exc:
            if exc.errcode != corp_tags.TAG_NAME_EXISTS:
                raise
        # WeCom has it already (an earlier attempt got through): link to it.
        wanted = self.tag.group_wecom_id
        groups = await corp_tags.get_corp_tag_list(client, group_ids=[wanted] if wanted else None)
        group = next(
            (
                g
                for g in groups
                if g.wecom_id == wanted or (not wanted and g.name == self.tag.group_name)
            ),
            None,
        )
        same = [t for t in group.tags if t.name == self.tag.name] if group else []
        if group is None or not same:
            raise OpFailed(f"WeCom refused the tag name {self.tag.name!r} in its group")
        return CorpTagGroup(group.wecom_id, group.name, group.order, group.create_time, same)

    async def apply(
        self, session: AsyncSession, tenant_id: uuid.UUID, answer: Any, now: datetime
    ) -> dict[str, Any]:
        group: CorpTagGroup = answer
        await repo.link_pushed_tag(session, tenant_id, self.tag.tag_id, self.tag.group_id, group)
        marks = await ops_repo.enqueue_marks_for_holders(session, tenant_id, self.tag.tag_id, now)
        return {
            "created": group.tags[0].wecom_id,
            "group": group.wecom_id,
            "contacts_to_mark": marks,
        }


@dataclass
class RenameJob(Job):
    wecom_id: str
    name: str

    async def call(self, client: WeComClient) -> None:
        await corp_tags.edit_corp_tag(client, self.wecom_id, self.name)

    async def apply(
        self, session: AsyncSession, tenant_id: uuid.UUID, answer: Any, now: datetime
    ) -> dict[str, Any]:
        await repo.set_wecom_name(session, tenant_id, self.wecom_id, self.name)
        return {"renamed": self.wecom_id, "name": self.name}


@dataclass
class DeleteJob(Job):
    tag_ids: list[str]
    group_ids: list[str]

    async def call(self, client: WeComClient) -> list[str]:
        try:
            await corp_tags.del_corp_tag(client, self.tag_ids, self.group_ids)
            return self.tag_ids + self.group_ids
        except WeComApiError as exc:
            if exc.errcode != corp_tags.INVALID_TAG_ID:
                raise
        # Some are gone already (deleted in WeCom too): delete the others.
        groups_now = await corp_tags.get_corp_tag_list(client)
        present = {g.wecom_id for g in groups_now} | {
            t.wecom_id for g in groups_now for t in g.tags
        }
        tags = [t for t in self.tag_ids if t in present]
        groups = [g for g in self.group_ids if g in present]
        if tags or groups:
            await corp_tags.del_corp_tag(client, tags, groups)
        return self.tag_ids + self.group_ids

    async def apply(
        self, session: AsyncSession, tenant_id: uuid.UUID, answer: Any, now: datetime
    ) -> dict[str, Any]:
        await repo.forget_corp_tags(session, tenant_id, answer)
        return {"deleted": answer}


@dataclass
class MarkJob(Job):
    userid: str
    external_userid: str
    add: list[str]
    remove: list[str]

    async def call(self, client: WeComClient) -> None:
        await corp_tags.mark_tag(client, self.userid, self.external_userid, self.add, self.remove)

    async def apply(
        self, session: AsyncSession, tenant_id: uuid.UUID, answer: Any, now: datetime
    ) -> dict[str, Any]:
        return {"userid": self.userid, "added": self.add, "removed": self.remove}


@dataclass
class RefetchJob(Job):
    """A customer's corp tags in WeCom, after a staff member edited it there."""

    contact_id: uuid.UUID
    external_userid: str

    async def call(self, client: WeComClient) -> set[str]:
        return await corp_tags.contact_corp_tag_ids(client, self.external_userid)

    async def apply(
        self, session: AsyncSession, tenant_id: uuid.UUID, answer: Any, now: datetime
    ) -> dict[str, Any]:
        return await apply_contact_corp_tags(session, tenant_id, self.contact_id, answer, now)


@dataclass
class Plans:
    jobs: dict[int, Job | Done] = field(default_factory=dict)
    # op id -> (why, whether trying again may help)
    failures: dict[int, tuple[str, bool]] = field(default_factory=dict)


async def plan(session: AsyncSession, tenant_id: uuid.UUID, ops: Sequence[ops_repo.Op]) -> Plans:
    """What each claimed op sends, read from the database now (a few statements for all
    of the round's marks and refetches together)."""
    plans = Plans()
    ops = [op for op in ops if _well_formed(op, plans)]
    contact_ops = [op for op in ops if op.kind in ("mark", "refetch")]
    handles = await users.wecom_handles(
        session, tenant_id, list({uuid.UUID(str(op.payload["contact_id"])) for op in contact_ops})
    )
    pairs = [
        (uuid.UUID(str(op.payload["contact_id"])), int(tag))
        for op in ops
        if op.kind == "mark"
        for tag in op.payload.get("tag_ids") or []
    ]
    targets: dict[tuple[uuid.UUID, int], repo.MarkTarget] = {
        (t.contact_id, t.tag_id): t for t in await repo.mark_targets(session, tenant_id, pairs)
    }
    for op in ops:
        try:
            plans.jobs[op.id] = await _plan_one(session, tenant_id, op, handles, targets)
        except OpFailed as exc:
            plans.failures[op.id] = (str(exc), False)
        except (KeyError, TypeError, ValueError) as exc:
            plans.failures[op.id] = (f"malformed payload: {type(exc).__name__}: {exc}", False)
    return plans


def _well_formed(op: ops_repo.Op, plans: Plans) -> bool:
    """Contact ops name a contact (and marks their tags) as the queue wrote them."""
    try:
        if op.kind in ("mark", "refetch"):
            uuid.UUID(str(op.payload["contact_id"]))
        if op.kind == "mark":
            [int(tag) for tag in op.payload.get("tag_ids") or []]
    except (KeyError, TypeError, ValueError) as exc:
        plans.failures[op.id] = (f"malformed payload: {type(exc).__name__}: {exc}", False)
        return False
    return True


async def _plan_one(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    op: ops_repo.Op,
    handles: dict[uuid.UUID, tuple[str, str]],
    targets: dict[tuple[uuid.UUID, int], repo.MarkTarget],
) -> Job | Done:
    payload = op.payload
    if op.kind == "sync":
        return SyncJob()
    if op.kind == "fetch":
        return FetchJob(list(payload.get("tag_ids") or []), list(payload.get("group_ids") or []))
    if op.kind == "order":
        return OrderJob(list(payload.get("group_ids") or []))
    if op.kind == "delete":
        tag_ids = list(payload.get("wecom_tag_ids") or [])
        group_ids = list(payload.get("wecom_group_ids") or [])
        return DeleteJob(tag_ids, group_ids) if tag_ids or group_ids else Done({})
    if op.kind == "push_tag":
        return await _plan_push_tag(session, tenant_id, int(payload["tag_id"]))
    if op.kind == "push_group":
        group = await repo.group_to_push(session, tenant_id, int(payload["group_id"]))
        if group is None or not group.mirrored or group.wecom_group_id is None:
            return Done({"skipped": "not a mirrored group in WeCom"})
        if group.name == group.wecom_name:
            return Done({"unchanged": group.wecom_group_id})
        _check_name(group.name)
        return RenameJob(group.wecom_group_id, group.name)
    contact_id = uuid.UUID(str(payload["contact_id"]))
    handle = handles.get(contact_id)
    if handle is None:
        return Done({"skipped": "the contact has no WeCom follower"})
    external_userid, userid = handle
    if op.kind == "refetch":
        return RefetchJob(contact_id, external_userid)
    if op.kind == "mark":
        add: list[str] = []
        remove: list[str] = []
        for tag in payload.get("tag_ids") or []:
            target = targets.get((contact_id, int(tag)))
            if target is None or not target.mirrored or target.wecom_tag_id is None:
                continue  # not in WeCom (yet: a pushed tag marks its holders once created)
            (add if target.held else remove).append(target.wecom_tag_id)
        if not add and not remove:
            return Done({"skipped": "no mirrored tag to mark"})
        return MarkJob(userid, external_userid, sorted(add), sorted(remove))
    raise OpFailed(f"unknown operation kind {op.kind!r}")


async def _plan_push_tag(session: AsyncSession, tenant_id: uuid.UUID, tag_id: int) -> Job | Done:
    tag = await repo.tag_to_push(session, tenant_id, tag_id)
    if tag is None or not tag.mirrored:
        return Done({"skipped": "not a tag of a mirrored group"})
    _check_name(tag.name)
    if tag.wecom_tag_id is None:
        _check_name(tag.group_name)
        if await repo.linked_tag_count(session, tenant_id) >= MAX_CORP_TAGS:
            raise OpFailed(f"the corp has {MAX_CORP_TAGS} tags already, WeCom's limit")
        return CreateTagJob(tag)
    if tag.name == tag.wecom_name:
        return Done({"unchanged": tag.wecom_tag_id})
    return RenameJob(tag.wecom_tag_id, tag.name)


def _check_name(name: str) -> None:
    if not name or len(name) > MAX_NAME:
        raise OpFailed(f"WeCom takes names of 1 to {MAX_NAME} characters: {name!r}")
