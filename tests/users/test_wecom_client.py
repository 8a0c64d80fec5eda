"""WeComClient against a real local HTTP fake of WeCom: tokens, retries, paging, logging."""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.users.wecom_client import (
    RedisTokenCache,
    WeComApiError,
    WeComClient,
    WeComUnavailable,
)
from tests.users.fake_wecom import FakeWeCom, unreachable_base_url

USER_GET = "/cgi-bin/user/get"
BATCH = "/cgi-bin/externalcontact/batch/get_by_user"
GROUP_LIST = "/cgi-bin/externalcontact/groupchat/list"


@pytest.fixture
async def fake() -> AsyncIterator[FakeWeCom]:
    async with FakeWeCom(corp_id="wwtestcorp", secret="s3cret-value-123") as server:
        server.add_staff("zhangsan", "张三")
        server.add_staff("lisi", "李四")
        yield server


def make_client(fake: FakeWeCom, **kwargs: Any) -> WeComClient:
    options: dict[str, Any] = {"backoff_base": 0.001, "qps": 1000.0}
    options.update(kwargs)
    return WeComClient(corp_id=fake.corp_id, secret=fake.secret, base_url=fake.base_url, **options)


@pytest.fixture
async def client(fake: FakeWeCom) -> AsyncIterator[WeComClient]:
    async with make_client(fake) as wecom:
        yield wecom


@pytest.fixture
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    redis = aioredis.Redis.from_url(url)
    try:
        await redis.ping()
    except (RedisError, OSError) as exc:
        await redis.aclose()
        pytest.skip(f"no Redis at {url}: {exc}")
    yield redis
    await redis.aclose()


# -- tokens -------------------------------------------------------------------


async def test_token_is_fetched_once_for_many_calls(fake: FakeWeCom, client: WeComClient) -> None:
    users = await asyncio.gather(*(client.get_user("zhangsan") for _ in range(20)))
    await client.get_user("lisi")
    assert {u["name"] for u in users} == {"张三"}
    assert fake.token_requests == 1
    assert fake.calls[USER_GET] == 21


async def test_expired_token_is_refreshed_and_the_call_retried_once(
    fake: FakeWeCom, client: WeComClient
) -> None:
    first = await client.access_token()
    fake.expire_token_once()
    user = await client.get_user("zhangsan")
    assert user["userid"] == "zhangsan"
    assert fake.token_requests == 2
    assert fake.calls[USER_GET] == 2
    assert await client.access_token() != first


async def test_token_rejected_twice_is_an_error_not_a_loop(
    fake: FakeWeCom, client: WeComClient
) -> None:
    await client.access_token()
    fake.expire_token_once()
    fake.expire_token_once()
    with pytest.raises(WeComApiError) as exc_info:
        await client.get_user("zhangsan")
    assert exc_info.value.errcode == 42001
    assert fake.calls[USER_GET] == 2
    assert fake.token_requests == 2


async def test_concurrent_calls_on_an_expired_token_refresh_it_once(
    fake: FakeWeCom, client: WeComClient
) -> None:
    await client.access_token()
    fake.expire_token_once()
    await asyncio.gather(*(client.get_user("zhangsan") for _ in range(10)))
    assert fake.token_requests == 2


async def test_wrong_secret_is_an_api_error(fake: FakeWeCom) -> None:
    async with WeComClient(
        corp_id=fake.corp_id, secret="wrong", base_url=fake.base_url, backoff_base=0.001
    ) as wecom:
        with pytest.raises(WeComApiError) as exc_info:
            await wecom.get_user("zhangsan")
    assert exc_info.value.errcode == 40001
    assert fake.token_requests == 1


async def test_shared_redis_cache_serves_a_second_client(
    fake: FakeWeCom, redis_client: aioredis.Redis
) -> None:
    prefix = f"scrmtest:wecom:{uuid.uuid4().hex}"
    try:
        async with (
            make_client(fake, token_cache=RedisTokenCache(redis_client, prefix)) as one,
            make_client(fake, token_cache=RedisTokenCache(redis_client, prefix)) as two,
        ):
            await one.get_user("zhangsan")
            await two.get_user("lisi")
            assert await one.access_token() == await two.access_token()
        assert fake.token_requests == 1
        keys = [k async for k in redis_client.scan_iter(match=f"{prefix}:*")]
        assert len(keys) == 1
        ttl = await redis_client.ttl(keys[0])
        assert 6800 <= ttl <= 6900  # expires_in 7200 minus the 300 s safety margin
    finally:
        keys = [k async for k in redis_client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await redis_client.delete(*keys)


# -- retries ------------------------------------------------------------------


async def test_frequency_limit_is_retried_then_succeeds(
    fake: FakeWeCom, client: WeComClient
) -> None:
    await client.access_token()
    fake.rate_limit(2)
    assert (await client.get_user("zhangsan"))["name"] == "张三"
    assert fake.calls[USER_GET] == 3


async def test_http_502_is_retried_then_succeeds(fake: FakeWeCom, client: WeComClient) -> None:
    fake.fail_http(3, status=502)  # the first gettoken attempts fail too
    assert (await client.get_user("zhangsan"))["name"] == "张三"
    assert fake.token_requests + fake.calls[USER_GET] == 5


async def test_backoff_grows_exponentially(fake: FakeWeCom) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    async with make_client(fake, backoff_base=0.05, max_retries=3, sleep=sleep) as wecom:
        await wecom.access_token()
        fake.fail_http(3)
        await wecom.get_user("zhangsan")
    # 0.05, 0.1, 0.2, each with jitter in [0.5, 1].
    assert len(slept) == 3
    for delay, base in zip(slept, (0.05, 0.1, 0.2), strict=True):
        assert base / 2 <= delay <= base


async def test_unavailable_after_max_retries_of_5xx(fake: FakeWeCom) -> None:
    async with make_client(fake, max_retries=2) as wecom:
        await wecom.access_token()
        fake.fail_http(100, status=503)
        with pytest.raises(WeComUnavailable):
            await wecom.get_user("zhangsan")
    assert fake.calls[USER_GET] == 3


async def test_api_error_after_max_retries_of_busy(fake: FakeWeCom) -> None:
    async with make_client(fake, max_retries=3) as wecom:
        await wecom.access_token()
        fake.rate_limit(100)
        with pytest.raises(WeComApiError) as exc_info:
            await wecom.get_user("zhangsan")
    assert exc_info.value.errcode == 45009
    assert fake.calls[USER_GET] == 4


async def test_server_down_is_unavailable(fake: FakeWeCom, client: WeComClient) -> None:
    fake.down = True
    with pytest.raises(WeComUnavailable):
        await client.get_user("zhangsan")
    assert fake.token_requests == 5  # 1 attempt + 4 retries, all on gettoken


async def test_unreachable_port_is_unavailable() -> None:
    async with WeComClient(
        corp_id="ww", secret="s", base_url=unreachable_base_url(), max_retries=2, backoff_base=0.001
    ) as wecom:
        with pytest.raises(WeComUnavailable) as exc_info:
            await wecom.get_user("zhangsan")
    assert "ConnectError" in str(exc_info.value)


async def test_other_errcodes_fail_at_once(fake: FakeWeCom, client: WeComClient) -> None:
    with pytest.raises(WeComApiError) as exc_info:
        await client.get_user("nobody")
    assert exc_info.value.errcode == 60111
    assert exc_info.value.path == USER_GET
    assert fake.calls[USER_GET] == 1


# -- endpoints and paging -------------------------------------------------------


async def test_pages_through_250_contacts(fake: FakeWeCom, client: WeComClient) -> None:
    for i in range(250):
        fake.add_contact(
            f"wm{i:04d}",
            f"客户{i}",
            unionid=f"union{i}",
            follow_users=[{"userid": "zhangsan", "remark": f"r{i}", "state": "channel-a"}],
        )
    fake.add_contact("wmlisi", "Only Li", follow_users=[{"userid": "lisi"}])
    items = [item async for item in client.iterate_external_contacts(["zhangsan"], limit=100)]
    assert fake.calls[BATCH] == 3
    assert [i["external_contact"]["external_userid"] for i in items] == [
        f"wm{i:04d}" for i in range(250)
    ]
    first = items[0]
    assert first["external_contact"]["unionid"] == "union0"
    assert first["follow_info"]["userid"] == "zhangsan"
    assert first["follow_info"]["state"] == "channel-a"
    assert {"remark", "createtime", "tag_id", "oper_userid", "add_way"} <= set(first["follow_info"])


async def test_batch_get_by_user_page_and_cursor(fake: FakeWeCom, client: WeComClient) -> None:
    for i in range(3):
        fake.add_contact(f"wm{i}", f"c{i}", follow_users=[{"userid": "zhangsan"}])
    page, cursor = await client.batch_get_by_user(["zhangsan"], limit=2)
    assert len(page) == 2
    assert cursor
    page, cursor = await client.batch_get_by_user(["zhangsan"], cursor, limit=2)
    assert [p["external_contact"]["name"] for p in page] == ["c2"]
    assert cursor == ""


async def test_pages_through_250_group_chats(fake: FakeWeCom, client: WeComClient) -> None:
    for i in range(250):
        fake.add_group(
            f"wr{i:04d}", f"群{i}", "zhangsan", members=[{"userid": "zhangsan", "type": 1}]
        )
    chats = [chat async for chat in client.iterate_group_chats(limit=100)]
    assert fake.calls[GROUP_LIST] == 3
    assert [c["chat_id"] for c in chats] == [f"wr{i:04d}" for i in range(250)]
    assert all(c["status"] == 0 for c in chats)


async def test_get_group_chat_has_wecom_member_fields(fake: FakeWeCom, client: WeComClient) -> None:
    fake.add_group(
        "wrABC",
        "VIP 群",
        "zhangsan",
        members=[
            {"userid": "zhangsan", "type": 1, "join_time": 1700000000},
            {"userid": "wmCUST", "type": 2, "join_time": 1700000100, "unionid": "uCUST"},
        ],
    )
    chat = await client.get_group_chat("wrABC")
    assert (chat["chat_id"], chat["name"], chat["owner"]) == ("wrABC", "VIP 群", "zhangsan")
    assert "create_time" in chat
    staff, customer = chat["member_list"]
    assert {"userid", "type", "join_time", "join_scene"} <= set(staff)
    assert "unionid" not in staff
    assert (customer["type"], customer["unionid"], customer["join_time"]) == (
        2,
        "uCUST",
        1700000100,
    )


async def test_get_external_contact_and_follow_user_list(
    fake: FakeWeCom, client: WeComClient
) -> None:
    fake.add_contact(
        "wmX",
        "Alice",
        unionid="uX",
        follow_users=[{"userid": "zhangsan", "remark": "老客户", "createtime": 1700000000}],
        gender=2,
    )
    data = await client.get_external_contact("wmX")
    contact = data["external_contact"]
    assert {k: contact[k] for k in ("external_userid", "name", "type", "gender", "unionid")} == {
        "external_userid": "wmX",
        "name": "Alice",
        "type": 1,
        "gender": 2,
        "unionid": "uX",
    }
    assert "avatar" in contact
    assert data["follow_user"][0]["remark"] == "老客户"
    assert data["follow_user"][0]["createtime"] == 1700000000
    assert await client.get_follow_user_list() == ["zhangsan", "lisi"]
    with pytest.raises(WeComApiError) as exc_info:
        await client.get_external_contact("wmMissing")
    assert exc_info.value.errcode == 84061


async def test_client_side_rate_limit(fake: FakeWeCom) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    # A clock that stands still: all 75 calls arrive at the same instant.
    async with make_client(fake, qps=50.0, clock=lambda: 1000.0, sleep=sleep) as wecom:
        await wecom.access_token()  # uses one token of the bucket
        await asyncio.gather(*(wecom.get_user("zhangsan") for _ in range(74)))
    # A burst of 50 passes at once; each of the other 25 waits 1/50 s after the one before.
    assert slept == pytest.approx([k / 50 for k in range(1, 26)])
    assert fake.calls[USER_GET] == 74


# -- logging ------------------------------------------------------------------


async def test_token_and_secret_never_logged(
    fake: FakeWeCom, client: WeComClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await client.get_user("zhangsan")
    fake.expire_token_once()
    fake.rate_limit(1)
    fake.fail_http(1)
    await client.get_user("zhangsan")
    fake.rate_limit(100)
    with pytest.raises(WeComApiError):
        await client.get_user("zhangsan")
    assert len(fake.issued_tokens) == 2

    messages = [record.getMessage() for record in caplog.records]
    text = "\n".join([*messages, caplog.text])
    for secret in [fake.secret, *fake.issued_tokens]:
        assert secret not in text
    retries = [m for r, m in zip(caplog.records, messages, strict=True) if r.name == "scrm.wecom"]
    assert any("45009" in m and USER_GET in m for m in retries)
    assert any("HTTP 502" in m for m in retries)
    # httpx logged the requests, with the token blanked out.
    assert any("access_token=***" in m for m in messages)
