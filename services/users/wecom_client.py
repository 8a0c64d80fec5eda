"""Async client of WeCom's server API (contacts, customer groups, staff) on httpx.

What WeCom makes callers deal with, handled here once:

* every call needs an ``access_token`` query parameter; the token is fetched
  with the corp secret, lives ~2 hours, and ``gettoken`` is itself rate
  limited, so it is cached (in Redis when several processes share a corp) and
  refreshed once when WeCom says it is invalid or expired (40014/42001/40001);
* WeCom answers HTTP 200 with an ``errcode``; "system busy" (-1) and the
  frequency limits (45009/45011/45033) are transient, like 5xx, 429 and
  transport errors, and are retried with exponential backoff and jitter;
* a client-side token bucket keeps one client under ``qps`` so bulk syncs do
  not trip those limits in the first place.

Secrets and tokens never reach a log record: our own messages carry only the
method, path and errcode, and a filter on the ``httpx`` logger redacts the
``access_token``/``corpsecret`` query values from its request lines.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final, Protocol

import httpx
import redis.asyncio as aioredis
from redis.exceptions import RedisError

__all__ = [
    "MemoryTokenCache",
    "RedisTokenCache",
    "TokenCache",
    "WeComApiError",
    "WeComClient",
    "WeComUnavailable",
]

logger = logging.getLogger("scrm.wecom")

TOKEN_ERRCODES: Final = frozenset({40001, 40014, 42001})
RETRYABLE_ERRCODES: Final = frozenset({-1, 45009, 45011, 45033})
_TOKEN_PATH: Final = "/cgi-bin/gettoken"  # noqa: S105 (a URL path, not a secret)
_MAX_DELAY_SECONDS: Final = 30.0
# Batch endpoints take at most 100 userids per request.
_MAX_USERIDS_PER_CALL: Final = 100


class WeComApiError(Exception):
    """WeCom answered with a non-zero errcode that retrying will not fix."""

    def __init__(self, errcode: int, errmsg: str, *, path: str = "") -> None:
        super().__init__(f"WeCom errcode {errcode} on {path or '?'}: {errmsg}")
        self.errcode = errcode
        self.errmsg = errmsg
        self.path = path


class WeComUnavailable(Exception):
    """WeCom could not be reached, or kept answering 5xx/429, after every retry."""


class TokenCache(Protocol):
    """Where access tokens are kept between calls (and, for Redis, between processes)."""

    async def get(self, key: str) -> str | None: ...

    async def set(self, key: str, token: str, ttl_seconds: float) -> None: ...


class MemoryTokenCache:
    """Token cache of one process; enough for a single worker or for tests."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[str, float]] = {}

    async def get(self, key: str) -> str | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        token, expires_at = entry
        if time.monotonic() >= expires_at:
            del self._entries[key]
            return None
        return token

    async def set(self, key: str, token: str, ttl_seconds: float) -> None:
        self._entries[key] = (token, time.monotonic() + ttl_seconds)


class RedisTokenCache:
    """Token cache shared by every process using the same Redis and prefix.

    When Redis fails, the token this process fetched last is still used (with a
    warning), so a Redis outage costs extra ``gettoken`` calls at worst, never
    a WeCom outage for us.
    """

    def __init__(self, redis: aioredis.Redis, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix.rstrip(":")
        self._local = MemoryTokenCache()

    def _key(self, key: str) -> str:
        return f"{self._prefix}:{key}"

    async def get(self, key: str) -> str | None:
        try:
            value = await self._redis.get(self._key(key))
        except RedisError as exc:
            logger.warning("wecom token cache read failed, using local copy: %r", exc)
            return await self._local.get(key)
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)

    async def set(self, key: str, token: str, ttl_seconds: float) -> None:
        await self._local.set(key, token, ttl_seconds)
        try:
            await self._redis.set(self._key(key), token, ex=max(1, int(ttl_seconds)))
        except RedisError as exc:
            logger.warning("wecom token cache write failed, kept locally: %r", exc)


class _RateLimiter:
    """Token bucket (as virtual scheduling) allowing ``rate``/s with a burst of one second.

    Reserving a slot is synchronous, so concurrent callers on one event loop
    need no lock and are served in arrival order.
    """

    def __init__(
        self,
        rate: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("qps must be positive")
        self._clock = clock
        self._sleep = sleep
        self._interval = 1.0 / rate
        self._burst_window = max(rate - 1.0, 0.0) * self._interval
        self._next_at = 0.0

    async def acquire(self) -> None:
        now = self._clock()
        slot = max(self._next_at, now)
        self._next_at = slot + self._interval
        wait = slot - self._burst_window - now
        if wait > 0:
            await self._sleep(wait)


_SECRET_QUERY = re.compile(r"((?:access_token|corpsecret)=)[^&\s\"']*")


class _RedactSecrets(logging.Filter):
    """Blank token and secret query values in records of loggers that print URLs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(
                _SECRET_QUERY.sub(r"\1***", str(arg)) if isinstance(arg, httpx.URL | str) else arg
                for arg in record.args
            )
        if isinstance(record.msg, str) and "=" in record.msg:
            record.msg = _SECRET_QUERY.sub(r"\1***", record.msg)
        return True


def _install_redaction() -> None:
    # httpx logs every request URL at INFO, and our token is in that URL.
    httpx_logger = logging.getLogger("httpx")
    if not any(isinstance(f, _RedactSecrets) for f in httpx_logger.filters):
        httpx_logger.addFilter(_RedactSecrets())


_install_redaction()


def _errcode_of(data: dict[str, Any]) -> int:
    try:
        return int(data.get("errcode", 0))
    except (TypeError, ValueError):
        return -1


class WeComClient:
    """One corp application's API client; share one instance per (corp, secret) and event loop.

    ``max_retries`` is the number of retries after the first attempt. The rate
    limit and the backoff wait with ``sleep`` on ``clock`` (tests pass their own).
    """

    def __init__(
        self,
        *,
        corp_id: str,
        secret: str,
        base_url: str = "https://qyapi.weixin.qq.com",
        http: httpx.AsyncClient | None = None,
        token_cache: TokenCache | None = None,
        max_retries: int = 4,
        backoff_base: float = 0.5,
        qps: float = 20.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self._corp_id = corp_id
        self._secret = secret
        self._base_url = base_url.rstrip("/")
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=5.0))
        self._cache: TokenCache = token_cache or MemoryTokenCache()
        self._max_retries = max_retries
        self._backoff_base = backoff_base
        self._sleep = sleep
        self._limiter = _RateLimiter(qps, clock, sleep)
        # The secret's hash tells apart two apps of one corp without storing the secret.
        self._cache_key = f"{corp_id}:{hashlib.sha256(secret.encode()).hexdigest()[:12]}"
        self._token_lock = asyncio.Lock()

    async def __aenter__(self) -> WeComClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client if this instance created it."""
        if self._owns_http:
            await self._http.aclose()

    # -- access token -------------------------------------------------------

    async def access_token(self, *, force_refresh: bool = False) -> str:
        """A valid access token: from the cache, else fetched once for all concurrent callers."""
        if not force_refresh:
            token = await self._cache.get(self._cache_key)
            if token:
                return token
        async with self._token_lock:
            if not force_refresh:
                token = await self._cache.get(self._cache_key)
                if token:
                    return token
            return await self._fetch_token()

    async def _replace_token(self, stale: str) -> str:
        # Many requests may see the same expired token at once: only the first
        # fetches a new one, the others pick it up from the cache.
        async with self._token_lock:
            token = await self._cache.get(self._cache_key)
            if token and token != stale:
                return token
            return await self._fetch_token()

    async def _fetch_token(self) -> str:
        params = {"corpid": self._corp_id, "corpsecret": self._secret}
        data = await self._send("GET", _TOKEN_PATH, params=params)
        errcode = _errcode_of(data)
        if errcode != 0:
            raise WeComApiError(errcode, str(data.get("errmsg", "")), path=_TOKEN_PATH)
        token = data.get("access_token")
        if not isinstance(token, str) or not token:
            raise WeComApiError(-1, "gettoken answered without access_token", path=_TOKEN_PATH)
        expires_in = int(data.get("expires_in", 7200))
        # Refresh 5 minutes early so a token never expires mid-request.
        ttl = max(expires_in - 300, expires_in // 2, 1)
        await self._cache.set(self._cache_key, token, ttl)
        logger.info("wecom access token fetched for corp %s (ttl %ss)", self._corp_id, ttl)
        return token

    # -- transport ----------------------------------------------------------

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        delay = self._backoff_base * (2.0**attempt) * (0.5 + random.random() / 2)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return min(delay, _MAX_DELAY_SECONDS)

    async def _send(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str],
        json: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The JSON answer of one call, retrying what is transient; errcode left to the caller."""
        url = self._base_url + path
        for attempt in range(self._max_retries + 1):
            await self._limiter.acquire()
            cause: Exception | None = None
            try:
                response = await self._http.request(method, url, params=params, json=json)
            except httpx.RequestError as exc:
                cause, reason, retry_after = exc, type(exc).__name__, None
                failure: Exception = WeComUnavailable(f"{method} {path}: {reason}")
            else:
                outcome = _outcome(method, path, response)
                if isinstance(outcome, dict):
                    return outcome
                reason, failure, retry_after = outcome
            if attempt == self._max_retries:
                logger.warning(
                    "wecom %s %s gave up after %d attempts (%s)", method, path, attempt + 1, reason
                )
                raise failure from cause
            delay = self._backoff(attempt, retry_after)
            logger.warning(
                "wecom %s %s failed (%s), retry %d/%d in %.2fs",
                method,
                path,
                reason,
                attempt + 1,
                self._max_retries,
                delay,
            )
            await self._sleep(delay)
        raise AssertionError("unreachable")  # the loop always returns or raises

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        json: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """An authenticated call: errcode 0 returns the JSON, an invalid token is replaced once."""
        query = dict(params or {})
        token = query["access_token"] = await self.access_token()
        data = await self._send(method, path, params=query, json=json)
        errcode = _errcode_of(data)
        if errcode in TOKEN_ERRCODES:
            logger.warning(
                "wecom %s %s: token rejected (errcode %d), refreshing", method, path, errcode
            )
            query["access_token"] = await self._replace_token(token)
            data = await self._send(method, path, params=query, json=json)
            errcode = _errcode_of(data)
        if errcode != 0:
            raise WeComApiError(errcode, str(data.get("errmsg", "")), path=path)
        return data

    # -- endpoints ----------------------------------------------------------

    async def get_external_contact(self, external_userid: str) -> dict[str, Any]:
        """The whole answer of externalcontact/get, ``follow_user`` merged across its pages."""
        path = "/cgi-bin/externalcontact/get"
        data = await self._call("GET", path, params={"external_userid": external_userid})
        follow_user: list[dict[str, Any]] = list(data.get("follow_user") or [])
        cursor = str(data.get("next_cursor") or "")
        # WeCom pages follow_user beyond 500 staff; a caller wants them all.
        while cursor:
            page = await self._call(
                "GET", path, params={"external_userid": external_userid, "cursor": cursor}
            )
            follow_user.extend(page.get("follow_user") or [])
            cursor = str(page.get("next_cursor") or "")
        data["follow_user"] = follow_user
        data["next_cursor"] = ""
        return data

    async def get_follow_user_list(self) -> list[str]:
        """Userids of the staff allowed to have external contacts."""
        data = await self._call("GET", "/cgi-bin/externalcontact/get_follow_user_list")
        return [str(userid) for userid in data.get("follow_user") or []]

    async def batch_get_by_user(
        self, userids: list[str], cursor: str = "", limit: int = 100
    ) -> tuple[list[dict[str, Any]], str]:
        """One page of (external_contact, follow_info) pairs of these staff, and the next cursor."""
        data = await self._call(
            "POST",
            "/cgi-bin/externalcontact/batch/get_by_user",
            json={"userid_list": userids, "cursor": cursor, "limit": limit},
        )
        return list(data.get("external_contact_list") or []), str(data.get("next_cursor") or "")

    async def list_group_chats(
        self, cursor: str = "", limit: int = 100
    ) -> tuple[list[dict[str, Any]], str]:
        """One page of ``{"chat_id", "status"}`` of every customer group, and the next cursor."""
        data = await self._call(
            "POST",
            "/cgi-bin/externalcontact/groupchat/list",
            json={"status_filter": 0, "cursor": cursor, "limit": limit},
        )
        return list(data.get("group_chat_list") or []), str(data.get("next_cursor") or "")

    async def get_group_chat(self, chat_id: str) -> dict[str, Any]:
        """The ``group_chat`` object (members with names) of one customer group."""
        data = await self._call(
            "POST",
            "/cgi-bin/externalcontact/groupchat/get",
            json={"chat_id": chat_id, "need_name": 1},
        )
        group_chat: dict[str, Any] = data["group_chat"]
        return group_chat

    async def get_user(self, userid: str) -> dict[str, Any]:
        """The whole answer of user/get for one staff member."""
        return await self._call("GET", "/cgi-bin/user/get", params={"userid": userid})

    async def iterate_external_contacts(
        self, userids: list[str], limit: int = 100
    ) -> AsyncIterator[dict[str, Any]]:
        """Every (external_contact, follow_info) pair of these staff, page after page.

        A contact followed by two of the staff comes once per staff member, as
        WeCom sends it. userids are sent 100 at a time, WeCom's maximum.
        """
        for start in range(0, len(userids), _MAX_USERIDS_PER_CALL):
            chunk = userids[start : start + _MAX_USERIDS_PER_CALL]
            cursor = ""
            while True:
                items, cursor = await self.batch_get_by_user(chunk, cursor, limit)
                for item in items:
                    yield item
                if not cursor:
                    break

    async def iterate_group_chats(self, limit: int = 100) -> AsyncIterator[dict[str, Any]]:
        """Every customer group as ``{"chat_id", "status"}``, page after page."""
        cursor = ""
        while True:
            items, cursor = await self.list_group_chats(cursor, limit)
            for item in items:
                yield item
            if not cursor:
                break


def _outcome(
    method: str, path: str, response: httpx.Response
) -> dict[str, Any] | tuple[str, Exception, float | None]:
    """The JSON to hand back, or (reason, error, Retry-After) of an answer worth retrying."""
    status = response.status_code
    if status == 429 or status >= 500:
        header = response.headers.get("Retry-After", "")
        retry_after = float(header) if header.isdigit() else None
        return f"HTTP {status}", WeComUnavailable(f"{method} {path}: HTTP {status}"), retry_after
    if status != 200:
        raise WeComUnavailable(f"{method} {path}: unexpected HTTP {status}")
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return "invalid JSON", WeComUnavailable(f"{method} {path}: answer is not JSON"), None
    errcode = _errcode_of(data)
    if errcode in RETRYABLE_ERRCODES:
        error = WeComApiError(errcode, str(data.get("errmsg", "")), path=path)
        return f"errcode {errcode}", error, None
    return data
