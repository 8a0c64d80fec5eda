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

It also serves the messaging API (fake_wecom_messages.py, as `fake.messaging`):
welcome messages, mass messages and their follow-up, Moments, app messages.

It also keeps the corp's customer tags (`add_corp_tag_group(...)`, then
get_corp_tag_list, add_corp_tag, edit_corp_tag, del_corp_tag and mark_tag, whose
tags show in externalcontact/get's follow_user[].tags). Like WeCom, those answer
45033 while more than `max_concurrent_tag_calls` (5) of them are in flight (each
takes `tag_call_delay` seconds; `peak_tag_calls` is the most seen at once, refused
ones included), 40068 for unknown tag or group ids, and `busy(n)` makes the next
n of them answer 45033.

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

from tests.users.fake_wecom_messages import FakeMessaging

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
    # Corp tag groups by group_id, each with its "tag" list (WeCom's field names).
    corp_tags: dict[str, dict[str, Any]] = field(default_factory=dict)


# The corp tag API (concurrency-limited like WeCom's).
CORP_TAG_PATHS = frozenset(
    {
        "/cgi-bin/externalcontact/get_corp_tag_list",
        "/cgi-bin/externalcontact/add_corp_tag",
        "/cgi-bin/externalcontact/edit_corp_tag",
        "/cgi-bin/externalcontact/del_corp_tag",
        "/cgi-bin/externalcontact/mark_tag",
    }
)
ERR_TOO_MANY_CONCURRENT = 45033
ERR_INVALID_TAG_ID = 40068
ERR_INVALID_PARAMETER = 40058
ERR_TAG_NAME_EXISTS = 40071
ERR_TOO_MANY_TAGS = 41042
MAX_TAG_NAME = 30
MAX_CORP_TAGS = 10_000


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
        self._busy = 0
        self.max_concurrent_tag_calls = 5
        self.tag_call_delay = 0.0
        self.tag_calls_in_flight = 0
        self.peak_tag_calls = 0
        self.mark_tag_requests: list[dict[str, Any]] = []
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
            ("POST", "/cgi-bin/externalcontact/get_corp_tag_list"): self._get_corp_tag_list,
            ("POST", "/cgi-bin/externalcontact/add_corp_tag"): self._add_corp_tag,
            ("POST", "/cgi-bin/externalcontact/edit_corp_tag"): self._edit_corp_tag,
            ("POST", "/cgi-bin/externalcontact/del_corp_tag"): self._del_corp_tag,
            ("POST", "/cgi-bin/externalcontact/mark_tag"): self._mark_tag,
        }
        # Welcome messages, mass messages, Moments, app messages (fake_wecom_messages.py).
        self.messaging = FakeMessaging(self)
        self._routes.update(self.messaging.routes())

    # -- lifecycle ------------------------------------------------------------

    async def __aenter__(self) -> FakeWeCom:
        self._server, self._thread, self.base_url = await serve_in_thread(self._asgi, "WeCom")
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._server is not None and self._thread is not None:
            await stop_served(self._server, self._thread)

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

    def add_corp_tag_group(
        self, name: str, tags: list[str], *, order: int = 0, tag_orders: list[int] | None = None
    ) -> dict[str, Any]:
        """A tag group made in WeCom's admin console (no callback); returns a copy of it."""
        with self._lock:
            now = int(time.time())
            group = {
                "group_id": _new_tag_id(),
                "group_name": name,
                "create_time": now,
                "order": order,
                "deleted": False,
                "tag": [],
            }
            for i, tag_name in enumerate(tags):
                group["tag"].append(
                    {
                        "id": _new_tag_id(),
                        "name": tag_name,
                        "create_time": now,
                        "order": (tag_orders or [0] * len(tags))[i],
                        "deleted": False,
                    }
                )
            self._state.corp_tags[group["group_id"]] = group
            return json.loads(json.dumps(group))

    def corp_tag_groups(self) -> list[dict[str, Any]]:
        """A copy of every corp tag group with its tags."""
        with self._lock:
            copied: list[dict[str, Any]] = json.loads(
                json.dumps(list(self._state.corp_tags.values()))
            )
            return copied

    def corp_tag_id(self, group_name: str, tag_name: str | None = None) -> str:
        """The id of a group (or of a tag in it), by name."""
        for group in self.corp_tag_groups():
            if group["group_name"] == group_name:
                if tag_name is None:
                    return str(group["group_id"])
                for tag in group["tag"]:
                    if tag["name"] == tag_name:
                        return str(tag["id"])
        raise KeyError((group_name, tag_name))

    def edit_corp_tag_in_console(
        self, tag_or_group_id: str, *, name: str | None = None, order: int | None = None
    ) -> None:
        """A rename or reorder made in WeCom's console (the test sends the callback)."""
        with self._lock:
            item = self._find_corp_tag(tag_or_group_id)
            assert item is not None, tag_or_group_id
            if name is not None:
                item["group_name" if "group_id" in item else "name"] = name
            if order is not None:
                item["order"] = order

    def add_corp_tag_in_console(self, group_id: str, name: str, *, order: int = 0) -> str:
        """A tag added to a group in WeCom's console; its id."""
        with self._lock:
            tag_id = _new_tag_id()
            self._state.corp_tags[group_id]["tag"].append(
                {
                    "id": tag_id,
                    "name": name,
                    "create_time": int(time.time()),
                    "order": order,
                    "deleted": False,
                }
            )
            return tag_id

    def delete_corp_tag_in_console(self, tag_or_group_id: str) -> None:
        with self._lock:
            self._delete_corp_tags([tag_or_group_id])

    def contact_corp_tags(self, external_userid: str, userid: str | None = None) -> set[str]:
        """The corp tag ids the contact's followers (or one of them) marked it with."""
        with self._lock:
            return {
                tag["tag_id"]
                for follow in self._state.follows.get(external_userid, [])
                if userid is None or follow["userid"] == userid
                for tag in follow.get("tags", [])
                if tag.get("type") == 1
            }

    def mark_in_console(self, external_userid: str, userid: str, tag_ids: set[str]) -> None:
        """The staff member sets the contact's corp tags in their WeCom client."""
        with self._lock:
            for follow in self._state.follows.get(external_userid, []):
                if follow["userid"] == userid:
                    follow["tags"] = [t for t in follow.get("tags", []) if t.get("type") != 1]
                    follow["tags"] += [self._follow_tag(tag_id) for tag_id in sorted(tag_ids)]

    # -- failure injection ----------------------------------------------------

    def busy(self, n: int) -> None:
        """The next n corp tag calls answer errcode 45033 (too many concurrent calls)."""
        with self._lock:
            self._busy += n

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
        if path != TOKEN_PATH and not path.startswith("/_fake/"):
            refusal = self._check_token(request.query_params.get("access_token"))
            if refusal is not None:
                return refusal
        if path in CORP_TAG_PATHS:
            return await self._limited(handler, request)
        return await handler(request)

    async def _limited(
        self, handler: Callable[[Request], Awaitable[Response]], request: Request
    ) -> Response:
        with self._lock:
            self.tag_calls_in_flight += 1
            self.peak_tag_calls = max(self.peak_tag_calls, self.tag_calls_in_flight)
            refused = self.tag_calls_in_flight > self.max_concurrent_tag_calls or self._busy > 0
            self._busy = max(self._busy - 1, 0)
        try:
            if self.tag_call_delay:
                await anyio.sleep(self.tag_call_delay)
            if refused:
                return _err(ERR_TOO_MANY_CONCURRENT, "api concurrent out of limit")
            return await handler(request)
        finally:
            with self._lock:
                self.tag_calls_in_flight -= 1

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

    # -- corp tags ------------------------------------------------------------

    def _find_corp_tag(self, tag_or_group_id: str) -> dict[str, Any] | None:
        group = self._state.corp_tags.get(tag_or_group_id)
        if group is not None:
            return group
        for group in self._state.corp_tags.values():
            for tag in group["tag"]:
                if tag["id"] == tag_or_group_id:
                    return tag
        return None

    def _group_of_tag(self, tag_id: str) -> dict[str, Any] | None:
        for group in self._state.corp_tags.values():
            if any(tag["id"] == tag_id for tag in group["tag"]):
                return group
        return None

    def _follow_tag(self, tag_id: str) -> dict[str, Any]:
        group = self._group_of_tag(tag_id)
        assert group is not None, tag_id
        tag = next(t for t in group["tag"] if t["id"] == tag_id)
        return {
            "group_name": group["group_name"],
            "tag_name": tag["name"],
            "tag_id": tag_id,
            "type": 1,
        }

    def _delete_corp_tags(self, ids: list[str]) -> None:
        removed: set[str] = set()
        for tag_or_group_id in ids:
            group = self._state.corp_tags.pop(tag_or_group_id, None)
            if group is not None:
                removed |= {t["id"] for t in group["tag"]}
                continue
            owner = self._group_of_tag(tag_or_group_id)
            if owner is not None:
                owner["tag"] = [t for t in owner["tag"] if t["id"] != tag_or_group_id]
                removed.add(tag_or_group_id)
                if not owner["tag"]:  # WeCom drops a group left without tags
                    self._state.corp_tags.pop(owner["group_id"], None)
        for follows in self._state.follows.values():
            for follow in follows:
                follow["tags"] = [
                    t for t in follow.get("tags", []) if t.get("tag_id") not in removed
                ]

    def _tag_count(self) -> int:
        return sum(len(g["tag"]) for g in self._state.corp_tags.values())

    async def _get_corp_tag_list(self, request: Request) -> Response:
        body = await self._json_body(request)
        if body is None:
            return _err(47001, "data format error")
        tag_ids = [str(t) for t in body.get("tag_id") or []]
        group_ids = [str(g) for g in body.get("group_id") or []]
        with self._lock:
            groups = list(self._state.corp_tags.values())
            if tag_ids:  # WeCom ignores group_id when tag_id is given
                known = {t["id"] for g in groups for t in g["tag"]}
                if any(t not in known for t in tag_ids):
                    return _err(ERR_INVALID_TAG_ID, "invalid tag id")
                wanted = set(tag_ids)
                answer = [
                    {**g, "tag": [t for t in g["tag"] if t["id"] in wanted]}
                    for g in groups
                    if any(t["id"] in wanted for t in g["tag"])
                ]
            elif group_ids:
                if any(g not in self._state.corp_tags for g in group_ids):
                    return _err(ERR_INVALID_TAG_ID, "invalid group id")
                answer = [g for g in groups if g["group_id"] in set(group_ids)]
            else:
                answer = groups
            return _ok(tag_group=json.loads(json.dumps(answer)))

    async def _add_corp_tag(self, request: Request) -> Response:
        body = await self._json_body(request)
        if body is None:
            return _err(47001, "data format error")
        tags = body.get("tag")
        if not isinstance(tags, list) or not tags:
            return _err(ERR_INVALID_PARAMETER, "tag is required")
        names = [str(t.get("name", "")) for t in tags]
        group_name = str(body.get("group_name") or "")
        if any(not n or len(n) > MAX_TAG_NAME for n in names) or len(group_name) > MAX_TAG_NAME:
            return _err(ERR_INVALID_PARAMETER, "name must be 1 to 30 characters")
        with self._lock:
            if self._tag_count() + len(names) > MAX_CORP_TAGS:
                return _err(ERR_TOO_MANY_TAGS, "corp tag count exceeds the limit")
            now = int(time.time())
            if body.get("group_id"):
                group = self._state.corp_tags.get(str(body["group_id"]))
                if group is None:
                    return _err(ERR_INVALID_TAG_ID, "invalid group id")
            else:
                if not group_name:
                    return _err(ERR_INVALID_PARAMETER, "group_id or group_name is required")
                group = next(
                    (g for g in self._state.corp_tags.values() if g["group_name"] == group_name),
                    None,
                )
                if group is None:
                    group = {
                        "group_id": _new_tag_id(),
                        "group_name": group_name,
                        "create_time": now,
                        "order": int(body.get("order") or 0),
                        "deleted": False,
                        "tag": [],
                    }
                    self._state.corp_tags[group["group_id"]] = group
            if any(n in {t["name"] for t in group["tag"]} for n in names):
                return _err(ERR_TAG_NAME_EXISTS, "tag name exists in the group")
            added = []
            for tag, name in zip(tags, names, strict=True):
                new = {
                    "id": _new_tag_id(),
                    "name": name,
                    "create_time": now,
                    "order": int(tag.get("order") or 0),
                }
                group["tag"].append({**new, "deleted": False})
                added.append(new)
            answer = {k: v for k, v in group.items() if k not in ("tag", "deleted")}
            return _ok(tag_group={**answer, "tag": added})

    async def _edit_corp_tag(self, request: Request) -> Response:
        body = await self._json_body(request)
        if body is None:
            return _err(47001, "data format error")
        name = body.get("name")
        if name is not None and (not str(name) or len(str(name)) > MAX_TAG_NAME):
            return _err(ERR_INVALID_PARAMETER, "name must be 1 to 30 characters")
        with self._lock:
            item = self._find_corp_tag(str(body.get("id", "")))
            if item is None:
                return _err(ERR_INVALID_TAG_ID, "invalid tag id")
            if name is not None:
                item["group_name" if "group_id" in item else "name"] = str(name)
            if body.get("order") is not None:
                item["order"] = int(body["order"])
        return _ok()

    async def _del_corp_tag(self, request: Request) -> Response:
        body = await self._json_body(request)
        if body is None:
            return _err(47001, "data format error")
        ids = [str(i) for i in (body.get("tag_id") or []) + (body.get("group_id") or [])]
        if not ids:
            return _err(ERR_INVALID_PARAMETER, "tag_id or group_id is required")
        with self._lock:
            if any(self._find_corp_tag(i) is None for i in ids):
                return _err(ERR_INVALID_TAG_ID, "invalid tag id")
            self._delete_corp_tags(ids)
        return _ok()

    async def _mark_tag(self, request: Request) -> Response:
        body = await self._json_body(request)
        if body is None:
            return _err(47001, "data format error")
        add = [str(t) for t in body.get("add_tag") or []]
        remove = [str(t) for t in body.get("remove_tag") or []]
        if not add and not remove:
            return _err(ERR_INVALID_PARAMETER, "add_tag or remove_tag is required")
        with self._lock:
            self.mark_tag_requests.append(body)
            follows = self._state.follows.get(str(body.get("external_userid", "")))
            if follows is None:
                return _err(84061, "not external contact")
            follow = next((f for f in follows if f["userid"] == body.get("userid")), None)
            if follow is None:
                return _err(84061, "not external contact of the user")
            if any(self._group_of_tag(t) is None for t in add + remove):
                return _err(ERR_INVALID_TAG_ID, "invalid tag id")
            kept = [
                t
                for t in follow.get("tags", [])
                if t.get("type") != 1 or t["tag_id"] not in set(add) | set(remove)
            ]
            follow["tags"] = kept + [self._follow_tag(t) for t in dict.fromkeys(add)]
        return _ok()


def _new_tag_id() -> str:
    return "et" + secrets.token_urlsafe(18)


def _follow_info(follow: dict[str, Any]) -> dict[str, Any]:
    """batch/get_by_user's follow_info: like follow_user, but tags as ``tag_id``."""
    info = {k: v for k, v in follow.items() if k != "tags"}
    info["tag_id"] = [t["tag_id"] for t in follow.get("tags", []) if "tag_id" in t]
    return info


async def serve_in_thread(
    app: Callable[[Scope, Receive, Send], Awaitable[None]], what: str
) -> tuple[uvicorn.Server, threading.Thread, str]:
    """Serve an ASGI app on a free 127.0.0.1 port from a thread of its own (it answers
    however busy the test's event loop is, as a remote server would): the server, its
    thread and its base URL."""
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on sockets that say so,
    # and without it every answer waits ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        interface="asgi3",
        lifespan="off",
        loop="asyncio",
        http="h11",
        log_config=None,  # never reconfigure the test run's logging
        log_level="warning",
        access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"fake {what} server did not start")
        await anyio.sleep(0.005)
    return server, thread, f"http://127.0.0.1:{port}"


async def stop_served(server: uvicorn.Server, thread: threading.Thread) -> None:
    server.should_exit = True
    await anyio.to_thread.run_sync(thread.join, 10)
