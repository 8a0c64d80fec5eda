"""The WeCom customer-contact messaging API, on the users service's client.

WeCom field names throughout (https://developer.work.weixin.qq.com/document/path/92135
and the pages beside it). The creating calls (send_welcome_msg, add_msg_template,
add_moment_task) have no idempotency key: the client they are given makes one
attempt (max_retries=0), and a caller whose answer was lost asks what WeCom already
has (`get_groupmsg_list_v2`) before calling again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.users.wecom_client import WeComClient

BASE = "/cgi-bin/externalcontact"
# add_msg_template takes at most 10,000 external_userids per call.
MAX_RECIPIENTS = 10_000
# get_groupmsg_send_result: 0 not sent yet, 1 sent, 2 not a friend, 3 over quota (the
# customer got another mass message today / this month).
RESULT_PENDING, RESULT_SENT, RESULT_NOT_FRIEND, RESULT_OVER_QUOTA = 0, 1, 2, 3


async def send_welcome_msg(client: WeComClient, welcome_code: str, text: str) -> None:
    await client._call(
        "POST",
        f"{BASE}/send_welcome_msg",
        json={"welcome_code": welcome_code, "text": {"content": text}},
    )


@dataclass(frozen=True)
class Created:
    msgid: str
    fail_list: list[str]


async def add_msg_template(
    client: WeComClient, chat_type: str, sender: str, recipients: list[str], text: str
) -> Created:
    body: dict[str, Any] = {
        "chat_type": chat_type,
        "sender": sender,
        "allow_select": False,
        "text": {"content": text},
    }
    if chat_type == "single":
        body["external_userid"] = recipients
    else:
        body["chat_id_list"] = recipients
    answer = await client._call("POST", f"{BASE}/add_msg_template", json=body)
    return Created(str(answer["msgid"]), [str(x) for x in answer.get("fail_list") or []])


async def groupmsg_list(
    client: WeComClient, chat_type: str, creator: str, start_time: int, end_time: int
) -> list[dict[str, Any]]:
    """The mass messages `creator` created between the times (Unix seconds), all pages."""
    found: list[dict[str, Any]] = []
    cursor = ""
    while True:
        answer = await client._call(
            "POST",
            f"{BASE}/get_groupmsg_list_v2",
            json={
                "chat_type": chat_type,
                "start_time": start_time,
                "end_time": end_time,
                "creator": creator,
                "filter_type": 0,
                "limit": 100,
                "cursor": cursor,
            },
        )
        found.extend(answer.get("group_msg_list") or [])
        cursor = str(answer.get("next_cursor") or "")
        if not cursor:
            return found


async def groupmsg_task(client: WeComClient, msgid: str) -> list[dict[str, Any]]:
    """Each sender's task of the message: {"userid", "status" (0 not sent, 2 sent), ...}."""
    found: list[dict[str, Any]] = []
    cursor = ""
    while True:
        answer = await client._call(
            "POST",
            f"{BASE}/get_groupmsg_task",
            json={"msgid": msgid, "limit": 1000, "cursor": cursor},
        )
        found.extend(answer.get("task_list") or [])
        cursor = str(answer.get("next_cursor") or "")
        if not cursor:
            return found


async def groupmsg_send_result(
    client: WeComClient, msgid: str, userid: str
) -> list[dict[str, Any]]:
    """Each recipient's result: {"external_userid" or "chat_id", "status", ...}."""
    found: list[dict[str, Any]] = []
    cursor = ""
    while True:
        answer = await client._call(
            "POST",
            f"{BASE}/get_groupmsg_send_result",
            json={"msgid": msgid, "userid": userid, "limit": 1000, "cursor": cursor},
        )
        found.extend(answer.get("send_list") or [])
        cursor = str(answer.get("next_cursor") or "")
        if not cursor:
            return found


async def remind_groupmsg_send(client: WeComClient, msgid: str) -> None:
    await client._call("POST", f"{BASE}/remind_groupmsg_send", json={"msgid": msgid})


async def cancel_groupmsg_send(client: WeComClient, msgid: str) -> None:
    await client._call("POST", f"{BASE}/cancel_groupmsg_send", json={"msgid": msgid})


async def add_moment_task(client: WeComClient, sender: str, text: str) -> str:
    """A Moments post for the staff member to publish (visible to their customers); the
    async job's id."""
    answer = await client._call(
        "POST",
        f"{BASE}/add_moment_task",
        json={
            "text": {"content": text},
            "visible_range": {"sender_list": {"user_list": [sender]}},
        },
    )
    return str(answer["jobid"])


async def moment_task_result(client: WeComClient, jobid: str) -> dict[str, Any]:
    """{"status": 1 started, 2 running, 3 done; "result": {"moment_id", ...}}."""
    return await client._call("GET", f"{BASE}/get_moment_task_result", params={"jobid": jobid})


async def send_app_text(client: WeComClient, agentid: int, userid: str, text: str) -> None:
    """An app message to a staff member (task reminders)."""
    await client._call(
        "POST",
        "/cgi-bin/message/send",
        json={"touser": userid, "msgtype": "text", "agentid": agentid, "text": {"content": text}},
    )
