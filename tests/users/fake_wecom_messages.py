"""The fake WeCom server's messaging endpoints (see fake_wecom.py), recording every call.

- send_welcome_msg: a welcome code is usable once (a second use answers 41051).
- add_msg_template (single and group): at most 10,000 recipients; each message keeps
  its creator, text, recipients and creation time, so get_groupmsg_list_v2 finds it
  by creator and time. The staff member has not confirmed it until the test calls
  `confirm(msgid)` (results 1 for every recipient, or those given).
- get_groupmsg_task, get_groupmsg_send_result, remind_groupmsg_send and
  cancel_groupmsg_send as WeCom answers them.
- add_moment_task / get_moment_task_result, and message/send (app messages to staff).
- add_contact_way (联系我 channel codes, with the `state` they carry).

Failure injection: `lose_answers(name, n)` makes the next n calls of an endpoint do
their work and then answer HTTP 502 (the answer lost on the way back); `hold(name)`
makes the next call of it do its work and wait, unanswered, until `release()`.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

if TYPE_CHECKING:
    from tests.users.fake_wecom import FakeWeCom

BASE = "/cgi-bin/externalcontact"
MAX_RECIPIENTS = 10_000


def _ok(**payload: Any) -> JSONResponse:
    return JSONResponse({"errcode": 0, "errmsg": "ok", **payload})


def _err(errcode: int, errmsg: str) -> JSONResponse:
    return JSONResponse({"errcode": errcode, "errmsg": errmsg})


@dataclass
class MassMessage:
    msgid: str
    chat_type: str
    sender: str
    recipients: list[str]
    text: str
    create_time: int
    confirmed: bool = False
    cancelled: bool = False
    reminders: int = 0
    results: dict[str, int] = field(default_factory=dict)


class FakeMessaging:
    def __init__(self, fake: FakeWeCom) -> None:
        self.fake = fake
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.requests: list[tuple[str, dict[str, Any]]] = []
        # The same, with when each came (time.time()).
        self.timed: list[tuple[str, dict[str, Any], float]] = []
        self.welcomes: list[dict[str, Any]] = []
        self.used_codes: set[str] = set()
        self.messages: dict[str, MassMessage] = {}
        self.moments: dict[str, dict[str, Any]] = {}
        self.app_messages: list[dict[str, Any]] = []
        self.contact_ways: dict[str, dict[str, Any]] = {}
        self._lost: Counter[str] = Counter()
        self._held: set[str] = set()
        self._release = threading.Event()
        self.holding = threading.Event()

    def routes(self) -> dict[tuple[str, str], Callable[[Request], Awaitable[Response]]]:
        named = {
            "send_welcome_msg": self._welcome,
            "add_msg_template": self._add_msg_template,
            "get_groupmsg_list_v2": self._list_v2,
            "get_groupmsg_task": self._task,
            "get_groupmsg_send_result": self._send_result,
            "remind_groupmsg_send": self._remind,
            "cancel_groupmsg_send": self._cancel,
            "add_moment_task": self._add_moment_task,
            "add_contact_way": self._add_contact_way,
        }
        routes: dict[tuple[str, str], Callable[[Request], Awaitable[Response]]] = {
            ("POST", f"{BASE}/{name}"): self._recorded(name, handler)
            for name, handler in named.items()
        }
        routes[("GET", f"{BASE}/get_moment_task_result")] = self._recorded(
            "get_moment_task_result", self._moment_result
        )
        routes[("POST", "/cgi-bin/message/send")] = self._recorded("message/send", self._app)
        routes[("GET", "/_fake/messages")] = self._dump
        return routes

    async def _dump(self, _: Request) -> Response:
        """Every recorded call with its time (for a benchmark in another process)."""
        with self._lock:
            return JSONResponse([list(t) for t in self.timed])

    # -- what tests do ----------------------------------------------------------------

    def lose_answers(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._lost[name] += n

    def hold(self, name: str) -> None:
        with self._lock:
            self._held.add(name)
            self._release.clear()
            self.holding.clear()

    def release(self) -> None:
        self._release.set()

    def confirm(self, msgid: str, results: dict[str, int] | None = None) -> None:
        """The staff member sends the message from their client."""
        with self._lock:
            message = self.messages[msgid]
            message.confirmed = True
            for recipient in message.recipients:
                message.results[recipient] = (results or {}).get(recipient, 1)

    def of_sender(self, sender: str) -> list[MassMessage]:
        with self._lock:
            return [m for m in self.messages.values() if m.sender == sender]

    # -- HTTP -------------------------------------------------------------------------

    def _recorded(
        self, name: str, handler: Callable[[Request, dict[str, Any]], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            body: dict[str, Any] = {}
            if request.method == "POST":
                try:
                    raw = json.loads(await request.body() or b"{}")
                except ValueError:
                    return _err(47001, "data format error")
                if not isinstance(raw, dict):
                    return _err(47001, "data format error")
                body = raw
            else:
                body = dict(request.query_params)
            with self._lock:
                self.calls[name] += 1
                self.requests.append((name, body))
                self.timed.append((name, body, time.time()))
                lose = self._lost[name] > 0
                if lose:
                    self._lost[name] -= 1
                held = name in self._held
                self._held.discard(name)
            answer = await handler(request, body)
            if held:
                self.holding.set()
                await anyio.to_thread.run_sync(self._release.wait, 60)
            if lose:
                return Response("bad gateway", status_code=502)
            return answer

        return run

    async def _welcome(self, _: Request, body: dict[str, Any]) -> Response:
        code = str(body.get("welcome_code") or "")
        if not code:
            return _err(41051, "welcome_code missing")
        with self._lock:
            if code in self.used_codes:
                return _err(41051, "welcome_code used or expired")
            self.used_codes.add(code)
            self.welcomes.append({**body, "at": time.time()})
        return _ok()

    async def _add_msg_template(self, _: Request, body: dict[str, Any]) -> Response:
        chat_type = body.get("chat_type", "single")
        sender = str(body.get("sender") or "")
        key = "external_userid" if chat_type == "single" else "chat_id_list"
        recipients = [str(r) for r in body.get(key) or []]
        text = (body.get("text") or {}).get("content")
        if not sender or not text or (chat_type == "single" and not recipients):
            return _err(40058, "invalid parameter")
        if len(recipients) > MAX_RECIPIENTS:
            return _err(40058, "too many external_userid")
        msgid = "msg" + secrets.token_urlsafe(12)
        with self._lock:
            self.messages[msgid] = MassMessage(
                msgid,
                chat_type,
                sender,
                recipients,
                str(text),
                int(time.time()),
                results=dict.fromkeys(recipients, 0),
            )
        return _ok(msgid=msgid, fail_list=[])

    async def _list_v2(self, _: Request, body: dict[str, Any]) -> Response:
        start, end = int(body.get("start_time", 0)), int(body.get("end_time", 2**31))
        with self._lock:
            found = [
                {
                    "msgid": m.msgid,
                    "creator": m.sender,
                    "create_type": 0,
                    "create_time": str(m.create_time),
                    "text": {"content": m.text},
                }
                for m in self.messages.values()
                if m.chat_type == body.get("chat_type", "single")
                and (not body.get("creator") or m.sender == body.get("creator"))
                and start <= m.create_time <= end
            ]
        return _ok(group_msg_list=found, next_cursor="")

    async def _task(self, _: Request, body: dict[str, Any]) -> Response:
        with self._lock:
            message = self.messages.get(str(body.get("msgid")))
            if message is None:
                return _err(41063, "msgid not found")
            status = 2 if message.confirmed else 0
            return _ok(task_list=[{"userid": message.sender, "status": status}], next_cursor="")

    async def _send_result(self, _: Request, body: dict[str, Any]) -> Response:
        with self._lock:
            message = self.messages.get(str(body.get("msgid")))
            if message is None:
                return _err(41063, "msgid not found")
            key = "external_userid" if message.chat_type == "single" else "chat_id"
            found = [
                {key: r, "userid": message.sender, "status": s} for r, s in message.results.items()
            ]
        return _ok(send_list=found, next_cursor="")

    async def _remind(self, _: Request, body: dict[str, Any]) -> Response:
        with self._lock:
            message = self.messages.get(str(body.get("msgid")))
            if message is None:
                return _err(41063, "msgid not found")
            message.reminders += 1
        return _ok()

    async def _cancel(self, _: Request, body: dict[str, Any]) -> Response:
        with self._lock:
            message = self.messages.get(str(body.get("msgid")))
            if message is None:
                return _err(41063, "msgid not found")
            message.cancelled = True
        return _ok()

    async def _add_contact_way(self, _: Request, body: dict[str, Any]) -> Response:
        """联系我: a channel code for staff, carrying `state` into the adds it brings."""
        users = body.get("user") or []
        state = str(body.get("state") or "")
        if body.get("type") not in (1, 2) or not users or len(state) > 30:
            return _err(40058, "invalid parameter")
        config_id = "cw" + secrets.token_hex(8)
        with self._lock:
            self.contact_ways[config_id] = dict(body)
        return _ok(
            config_id=config_id, qr_code=f"https://wework.qpic.cn/fake/contactway/{config_id}"
        )

    async def _add_moment_task(self, _: Request, body: dict[str, Any]) -> Response:
        jobid = "job" + secrets.token_urlsafe(10)
        with self._lock:
            self.moments[jobid] = {**body, "moment_id": "mom" + secrets.token_urlsafe(8)}
        return _ok(jobid=jobid)

    async def _moment_result(self, _: Request, body: dict[str, Any]) -> Response:
        with self._lock:
            found = self.moments.get(str(body.get("jobid")))
        if found is None:
            return _err(41063, "jobid not found")
        return _ok(
            status=3,
            type="add_moment_task",
            result={"errcode": 0, "errmsg": "ok", "moment_id": found["moment_id"]},
        )

    async def _app(self, _: Request, body: dict[str, Any]) -> Response:
        with self._lock:
            self.app_messages.append(body)
        return _ok(invaliduser="", msgid="app" + secrets.token_urlsafe(6))
