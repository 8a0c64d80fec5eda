"""WeCom's corp tag API (externalcontact/*_corp_tag*, mark_tag) on the users service's
client, which brings the access token, the errcodes and the transport errors.

The client is built with no retries of its own (`max_retries=0`): an op that meets
45033 or an unreachable WeCom goes back to the queue with backoff (queue.py), so
no worker sleeps on a call while it holds one of the corp's five call slots.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.users.wecom_client import RETRYABLE_ERRCODES, WeComApiError, WeComClient

BASE = "/cgi-bin/externalcontact"
# WeCom's answers: an unknown tag or group id, a name already used in the group.
INVALID_TAG_ID = 40068
TAG_NAME_EXISTS = 40071


@dataclass(frozen=True)
class CorpTag:
    wecom_id: str
    group_wecom_id: str
    name: str
    order: int
    create_time: int | None


@dataclass(frozen=True)
class CorpTagGroup:
    wecom_id: str
    name: str
    order: int
    create_time: int | None
    tags: list[CorpTag]


def retryable(exc: Exception) -> bool:
    """Whether trying again later may succeed (busy, rate limited, token trouble)."""
    if isinstance(exc, WeComApiError):
        return exc.errcode in RETRYABLE_ERRCODES or exc.errcode in (40001, 40014, 42001)
    return True


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def parse_groups(answer: dict[str, Any]) -> list[CorpTagGroup]:
    """The live (not deleted) groups and tags of a get_corp_tag_list / add_corp_tag answer."""
    raw = answer.get("tag_group")
    items = raw if isinstance(raw, list) else [raw] if isinstance(raw, dict) else []
    groups: list[CorpTagGroup] = []
    for group in items:
        if not isinstance(group, dict) or group.get("deleted") or not group.get("group_id"):
            continue
        group_id = str(group["group_id"])
        tags = [
            CorpTag(
                wecom_id=str(tag["id"]),
                group_wecom_id=group_id,
                name=str(tag.get("name") or ""),
                order=_int(tag.get("order")) or 0,
                create_time=_int(tag.get("create_time")),
            )
            for tag in group.get("tag") or []
            if isinstance(tag, dict) and tag.get("id") and not tag.get("deleted")
        ]
        groups.append(
            CorpTagGroup(
                wecom_id=group_id,
                name=str(group.get("group_name") or ""),
                order=_int(group.get("order")) or 0,
                create_time=_int(group.get("create_time")),
                tags=tags,
            )
        )
    return groups


async def get_corp_tag_list(
    client: WeComClient, *, tag_ids: list[str] | None = None, group_ids: list[str] | None = None
) -> list[CorpTagGroup]:
    """Every corp tag group, or those holding `tag_ids` (only those tags), or `group_ids`."""
    body: dict[str, Any] = {}
    if tag_ids:
        body["tag_id"] = tag_ids
    elif group_ids:
        body["group_id"] = group_ids
    answer = await client._call("POST", f"{BASE}/get_corp_tag_list", json=body)
    return parse_groups(answer)


async def add_corp_tag(
    client: WeComClient, name: str, *, group_id: str | None, group_name: str | None
) -> CorpTagGroup:
    """Add one tag to a group (by id), or to the group of that name (created if new)."""
    body: dict[str, Any] = {"tag": [{"name": name}]}
    if group_id:
        body["group_id"] = group_id
    else:
        body["group_name"] = group_name
    answer = await client._call("POST", f"{BASE}/add_corp_tag", json=body)
    [group] = parse_groups(answer)
    return group


async def edit_corp_tag(client: WeComClient, wecom_id: str, name: str) -> None:
    """Rename a tag or a tag group."""
    await client._call("POST", f"{BASE}/edit_corp_tag", json={"id": wecom_id, "name": name})


async def del_corp_tag(client: WeComClient, tag_ids: list[str], group_ids: list[str]) -> None:
    """Delete tags and groups (a group goes with its tags)."""
    await client._call(
        "POST", f"{BASE}/del_corp_tag", json={"tag_id": tag_ids, "group_id": group_ids}
    )


async def mark_tag(
    client: WeComClient, userid: str, external_userid: str, add: list[str], remove: list[str]
) -> None:
    """Set and clear corp tags on a customer, as the staff member following it."""
    await client._call(
        "POST",
        f"{BASE}/mark_tag",
        json={
            "userid": userid,
            "external_userid": external_userid,
            "add_tag": add,
            "remove_tag": remove,
        },
    )


async def contact_corp_tag_ids(client: WeComClient, external_userid: str) -> set[str]:
    """The corp tags (type 1) the customer's followers marked it with, all followers."""
    data = await client.get_external_contact(external_userid)
    return {
        str(tag["tag_id"])
        for follow in data.get("follow_user") or []
        for tag in follow.get("tags") or []
        if isinstance(tag, dict) and tag.get("tag_id") and _int(tag.get("type")) == 1
    }
