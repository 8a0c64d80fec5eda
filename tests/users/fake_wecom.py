"""A fake WeCom server for tests: real HTTP on 127.0.0.1, in-memory state, injectable failures.

    async with FakeWeCom() as fake:
        fake.add_staff("zhangsan", "张三")
        fake.add_contact("wm1", "Alice", follow_users=[{"userid": "zhangsan"}])
        client = WeComClient(corp_id=fake.corp_id, secret=fake.secret, base_url=fake.base_url)

It serves the endpoints `services.users.wecom_client` uses, answering with
the field names of WeCom's real API, checks the access_token it issued, pages
with an opaque cursor, and can misbehave on demand: `expire_token_once()`,
`rate_limit(n)`, `fail_http(n, status)`, `down = True`, or
`unreachable_base_url()` for a port nobody listens on.

The server runs uvicorn in a thread of its own, so it keeps answering however
the test's event loop is busy, as a remote server would.
"""

from __future__ import annotations

import json
import secrets
import socket
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

TOKEN_PATH = "/cgi-bin/gettoken"


def unreachable_base_url() -> str:
    """Base URL of a local port that was free a moment ago: connecting is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@dataclass
class _Token:
    value: str
    expires_at: float


@dataclass
class _State:
    staff: dict[str, dict[str, Any]] = field(default_factory=dict)
    contacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    follows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)


def _ok(**payload: Any) -> JSONResponse:
    return JSONResponse({"errcode": 0, "errmsg": "ok", **payload})


def _err(errcode: int, errmsg: str) -> JSONResponse:
    return JSONResponse({"errcode": errcode, "errmsg": errmsg})


def _page(items: list[Any], cursor: str, limit: int) -> tuple[list[Any], str] | None:
    """Items of one page and the next cursor ("" at the end); None for a bad cursor."""
    try:
        offset = int(cursor, 16) if cursor else 0
    except ValueError:
        return None
    if offset < 0 or offset > len(items):
        return None
    end = offset + limit
    return items[offset:end], (format(end, "x") if end < len(items) else "")


class FakeWeCom:
    """Fake of qyapi.weixin.qq.com; mutate its state between calls, read its counters after."""

    def __init__(
        self,
        *,
        corp_id: str = "wwfakecorp",
        secret: str = "fake-secret",  # noqa: S107 - a test double's credential
        token_ttl: int = 7200,
    ) -> None:
        self.corp_id = corp_id
        self.secret = secret
        self.token_ttl = token_ttl
        self.base_url = ""
        self.calls: Counter[str] = Counter()
        self.token_requests = 0
        self.issued_tokens: list[str] = []
        self.down = False
        self._state = _State()
        self._token: _Token | None = None
        self._expire_next = 0
        self._rate_limited = 0
        self._http_failures = 0
        self._http_failure_status = 502
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._routes: dict[tuple[str, str], Callable[[Request], Awaitable[Response]]] = {
            ("GET", TOKEN_PATH): self._gettoken,
            ("GET", "/cgi-bin/user/get"): self._user_get,
            ("GET", "/cgi-bin/externalcontact/get"): self._contact_get,
            ("GET", "/cgi-bin/externalcontact/get_follow_user_list"): self._follow_user_list,
            ("POST", "/cgi-bin/externalcontact/batch/get_by_user"): self._batch_get_by_user,
            ("POST", "/cgi-bin/externalcontact/groupchat/list"): self._groupchat_list,
            ("POST", "/cgi-bin/externalcontact/groupchat/get"): self._groupchat_get,
        }

    # -- lifecycle ------------------------------------------------------------

    async def __aenter__(self) -> FakeWeCom:
        # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on sockets that say so,
        # and without it every answer waits ~40 ms for a delayed ACK.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._asgi,
            interface="asgi3",
            lifespan="off",
            loop="asyncio",
            http="h11",
            log_config=None,  # never reconfigure the test run's logging
            log_level="warning",
            access_log=False,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("fake WeCom server did not start")
            await anyio.sleep(0.005)
        self.base_url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            await anyio.to_thread.run_sync(self._thread.join, 10)

    # -- state the test sets --------------------------------------------------

    def add_staff(self, userid: str, name: str, *, department: list[int] | None = None) -> None:
        self._state.staff[userid] = {
            "userid": userid,
            "name": name,
            "department": department or [1],
            "status": 1,
        }

    def add_contact(
        self,
        external_userid: str,
        name: str,
        unionid: str | None = None,
        follow_users: list[dict[str, Any]] | None = None,
        *,
        type: int = 1,
        avatar: str = "",
        gender: int = 0,
        corp_name: str | None = None,
    ) -> None:
        contact: dict[str, Any] = {
            "external_userid": external_userid,
            "name": name,
            "type": type,
            "avatar": avatar or f"https://wework.qpic.cn/fake/{external_userid}/0",
            "gender": gender,
        }
        if unionid is not None:
            contact["unionid"] = unionid
        if corp_name is not None:
            contact["corp_name"] = corp_name
        self._state.contacts[external_userid] = contact
        now = int(time.time())
        self._state.follows[external_userid] = [
            {
                "userid": f["userid"],
                "remark": f.get("remark", ""),
                "description": f.get("description", ""),
                "createtime": f.get("createtime", now),
                "tags": f.get("tags", []),
                "remark_mobiles": f.get("remark_mobiles", []),
                "oper_userid": f.get("oper_userid", f["userid"]),
                "add_way": f.get("add_way", 0),
                **({"state": f["state"]} if f.get("state") else {}),
            }
            for f in follow_users or []
        ]

    def add_group(
        self,
        chat_id: str,
        name: str,
        owner: str,
        members: list[dict[str, Any]] | None = None,
        *,
        status: int = 0,
        create_time: int | None = None,
        notice: str = "",
    ) -> None:
        now = int(time.time())
        member_list = []
        for m in members or []:
            member: dict[str, Any] = {
                "userid": m["userid"],
                "type": m.get("type", 2),
                "join_time": m.get("join_time", now),
                "join_scene": m.get("join_scene", 1),
                "invitor": {"userid": m.get("invitor", owner)},
                "group_nickname": m.get("group_nickname", ""),
                "name": m.get("name", m["userid"]),
            }
            if m.get("unionid") and member["type"] == 2:
                member["unionid"] = m["unionid"]
            member_list.append(member)
        self._state.groups[chat_id] = {
            "chat_id": chat_id,
            "name": name,
            "owner": owner,
            "create_time": create_time if create_time is not None else now,
            "notice": notice,
            "member_list": member_list,
            "admin_list": [],
            "member_version": secrets.token_hex(8),
            "status": status,
        }

    # -- failure injection ----------------------------------------------------

    def expire_token_once(self) -> None:
        """The next API call (not gettoken) answers 42001 and the issued token dies."""
        with self._lock:
            self._expire_next += 1

    def rate_limit(self, n: int) -> None:
        """The next n calls, gettoken included, answer errcode 45009."""
        with self._lock:
            self._rate_limited += n

    def fail_http(self, n: int, status: int = 502) -> None:
        """The next n calls, gettoken included, answer HTTP ``status``."""
        with self._lock:
            self._http_failures += n
            self._http_failure_status = status

    # -- HTTP -----------------------------------------------------------------

    async def _asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        response = await self._dispatch(request)
        await response(scope, receive, send)

    async def _dispatch(self, request: Request) -> Response:
        path = request.url.path
        with self._lock:
            self.calls[path] += 1
            if path == TOKEN_PATH:
                self.token_requests += 1
            if self.down:
                return Response("service unavailable", status_code=503)
            if self._http_failures:
                self._http_failures -= 1
                return Response("bad gateway", status_code=self._http_failure_status)
            if self._rate_limited:
                self._rate_limited -= 1
                return _err(45009, "api freq out of limit")
        handler = self._routes.get((request.method, path))
        if handler is None:
            return Response("not found", status_code=404)
        if path != TOKEN_PATH:
            refusal = self._check_token(request.query_params.get("access_token"))
            if refusal is not None:
                return refusal
        return await handler(request)

    def _check_token(self, token: str | None) -> JSONResponse | None:
        with self._lock:
            if not token:
                return _err(41001, "access_token missing")
            current = self._token
            if current is None or token != current.value:
                return _err(40014, "invalid access_token")
            if self._expire_next or time.monotonic() >= current.expires_at:
                self._expire_next = max(self._expire_next - 1, 0)
                self._token = None
                return _err(42001, "access_token expired")
        return None

    async def _gettoken(self, request: Request) -> Response:
        q = request.query_params
        with self._lock:
            if q.get("corpid") != self.corp_id or q.get("corpsecret") != self.secret:
                return _err(40001, "invalid credential")
            now = time.monotonic()
            # Like WeCom: the same token while it is valid, a new one after.
            if self._token is None or now >= self._token.expires_at:
                self._token = _Token(secrets.token_urlsafe(48), now + self.token_ttl)
                self.issued_tokens.append(self._token.value)
            remaining = int(self._token.expires_at - now)
            return _ok(access_token=self._token.value, expires_in=remaining)

    @staticmethod
    async def _json_body(request: Request) -> dict[str, Any] | None:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return None
        return body if isinstance(body, dict) else None

    async def _user_get(self, request: Request) -> Response:
        user = self._state.staff.get(request.query_params.get("userid", ""))
        if user is None:
            return _err(60111, "userid not found")
        return _ok(**user)

    async def _contact_get(self, request: Request) -> Response:
        external_userid = request.query_params.get("external_userid", "")
        contact = self._state.contacts.get(external_userid)
        if contact is None:
            return _err(84061, "not external contact")
        return _ok(
            external_contact=contact,
            follow_user=self._state.follows.get(external_userid, []),
            next_cursor="",
        )

    async def _follow_user_list(self, _request: Request) -> Response:
        return _ok(follow_user=list(self._state.staff))

    async def _batch_get_by_user(self, request: Request) -> Response:
        body = await self._json_body(request)
        if body is None:
            return _err(47001, "data format error")
        userids = body.get("userid_list")
        limit = body.get("limit", 50)
        if not isinstance(userids, list) or not 1 <= len(userids) <= 100:
            return _err(40058, "userid_list must hold 1 to 100 userids")
        if not isinstance(limit, int) or not 1 <= limit <= 100:
            return _err(40058, "limit must be 1 to 100")
        wanted = set(userids)
        pairs = [
            {
                "external_contact": self._state.contacts[external_userid],
                "follow_info": _follow_info(follow),
            }
            for external_userid, follows in self._state.follows.items()
            for follow in follows
            if follow["userid"] in wanted
        ]
        page = _page(pairs, str(body.get("cursor") or ""), limit)
        if page is None:
            return _err(40058, "invalid cursor")
        return _ok(external_contact_list=page[0], next_cursor=page[1])

    async def _groupchat_list(self, request: Request) -> Response:
        body = await self._json_body(request)
        if body is None:
            return _err(47001, "data format error")
        limit = body.get("limit", 100)
        if not isinstance(limit, int) or not 1 <= limit <= 1000:
            return _err(40058, "limit must be 1 to 1000")
        # status_filter 0 means every group; 1..3 select an owner-resigned state.
        status_filter = body.get("status_filter", 0)
        chats = [
            {"chat_id": g["chat_id"], "status": g["status"]}
            for g in self._state.groups.values()
            if status_filter == 0 or g["status"] == status_filter
        ]
        page = _page(chats, str(body.get("cursor") or ""), limit)
        if page is None:
            return _err(40058, "invalid cursor")
        return _ok(group_chat_list=page[0], next_cursor=page[1])

    async def _groupchat_get(self, request: Request) -> Response:
        body = await self._json_body(request)
        if body is None:
            return _err(47001, "data format error")
        group = self._state.groups.get(str(body.get("chat_id", "")))
        if group is None:
            return _err(40050, "chatid not found")
        chat = {k: v for k, v in group.items() if k != "status"}
        if not body.get("need_name"):
            chat["member_list"] = [
                {k: v for k, v in m.items() if k != "name"} for m in chat["member_list"]
            ]
        return _ok(group_chat=chat)


def _follow_info(follow: dict[str, Any]) -> dict[str, Any]:
    """batch/get_by_user's follow_info: like follow_user, but tags as ``tag_id``."""
    info = {k: v for k, v in follow.items() if k != "tags"}
    info["tag_id"] = [t["tag_id"] for t in follow.get("tags", []) if "tag_id" in t]
    return info
