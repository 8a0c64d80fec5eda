"""WeCom callbacks over HTTP: verification, rejection, dedupe, and every event type."""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
import pytest
from sqlalchemy import text

from shared.app import create_app
from shared.events import SERVICES
from shared.runtime import Runtime
from tests.users.support import (
    WeComTenant,
    chat_event,
    contact_event,
    post,
    process_all,
    tag_event,
    wecom_tenant,
)


@pytest.fixture
async def corp(committed: Runtime) -> WeComTenant:
    return await wecom_tenant(committed)


async def scalar(runtime: Runtime, sql: str, **params: object) -> object:
    async with runtime.engine.connect() as conn:
        return await conn.scalar(text(sql), params)


async def outbox_types(runtime: Runtime) -> list[str]:
    async with runtime.engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT type FROM outbox_events WHERE type NOT LIKE 'users.%' "
                # Profile changes have tests of their own (test_profile_events.py).
                "AND type NOT IN ('tenant.created', 'contact.profile_changed') ORDER BY id"
            )
        )
        return [r[0] for r in rows]


async def test_url_verification_answers_the_decrypted_echostr(
    committed_client: httpx.AsyncClient, corp: WeComTenant
) -> None:
    timestamp, nonce = str(int(time.time())), "n0nce"
    echostr = corp.crypto.encrypt("echo-1234567890")
    response = await committed_client.get(
        f"/v1/wecom/{corp.slug}/callback",
        params={
            "msg_signature": corp.crypto.signature(timestamp, nonce, echostr),
            "timestamp": timestamp,
            "nonce": nonce,
            "echostr": echostr,
        },
    )
    assert response.status_code == 200
    assert response.text == "echo-1234567890"
    assert response.headers["content-type"].startswith("text/plain")
    bad = await committed_client.get(
        f"/v1/wecom/{corp.slug}/callback",
        params={
            "msg_signature": "0" * 40,
            "timestamp": timestamp,
            "nonce": nonce,
            "echostr": echostr,
        },
    )
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_signature"


async def test_callback_is_acknowledged_then_processed(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant
) -> None:
    xml = contact_event("add_external_contact", State="live-0923", WelcomeCode="WELCOME1")
    response = await post(committed_client, corp.callback(xml))
    assert response.status_code == 200 and response.text == "success"
    assert await scalar(committed, "SELECT count(*) FROM inbound_events") == 1
    assert await scalar(committed, "SELECT count(*) FROM contacts") == 0, (
        "nothing on the request path"
    )
    await process_all(committed)
    async with committed.engine.connect() as conn:
        follow = (
            await conn.execute(
                text("SELECT staff_userid, status, state, welcome_code FROM contact_follows")
            )
        ).one()
        contact = (
            await conn.execute(text("SELECT owner_staff_userid, channel_state FROM contacts"))
        ).one()
    assert tuple(follow) == ("zhangsan", "active", "live-0923", "WELCOME1")
    assert tuple(contact) == ("zhangsan", "live-0923")
    assert await outbox_types(committed) == ["contact.added"]
    payload = await scalar(
        committed, "SELECT payload FROM outbox_events WHERE type = 'contact.added'"
    )
    assert isinstance(payload, dict)
    assert payload["state"] == "live-0923" and payload["new_contact"] is True


@pytest.mark.parametrize(
    "tamper",
    ["signature", "ciphertext", "corp_id", "stale", "not_xml", "missing_params"],
)
async def test_rejected_callbacks_store_nothing(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant, tamper: str
) -> None:
    from services.users.wecom_crypto import WeComCrypto
    from tests.users.support import AES_KEY, TOKEN

    request = corp.callback(contact_event("add_external_contact"))
    expected = {
        "signature": 401,
        "ciphertext": 400,
        "corp_id": 400,
        "stale": 400,
        "not_xml": 400,
        "missing_params": 422,
    }
    if tamper == "signature":
        request["params"]["msg_signature"] = "f" * 40
    elif tamper == "ciphertext":
        body = request["content"].decode()
        start = body.index("<Encrypt><![CDATA[") + len("<Encrypt><![CDATA[")
        flipped = "A" if body[start + 10] != "A" else "B"
        body = body[: start + 10] + flipped + body[start + 11 :]
        request["content"] = body.encode()
        # Re-sign the tampered ciphertext: only decryption can catch it now.
        encrypt = body[start : body.index("]]></Encrypt>")]
        p = request["params"]
        p["msg_signature"] = corp.crypto.signature(p["timestamp"], p["nonce"], encrypt)
    elif tamper == "corp_id":
        other = WeComCrypto(TOKEN, AES_KEY, "wwSomeoneElse")
        ts = str(int(time.time()))
        body, signature = other.build_callback(
            contact_event("add_external_contact"), timestamp=ts, nonce="x1"
        )
        request.update(
            content=body, params={"msg_signature": signature, "timestamp": ts, "nonce": "x1"}
        )
    elif tamper == "stale":
        request = corp.callback(contact_event("add_external_contact"), at=int(time.time()) - 301)
    elif tamper == "not_xml":
        request["content"] = b"{not xml"
    elif tamper == "missing_params":
        request["params"] = {}
    response = await post(committed_client, request)
    assert response.status_code == expected[tamper], response.text
    assert set(response.json()["error"]) == {"code", "message", "details"}
    assert await scalar(committed, "SELECT count(*) FROM inbound_events") == 0
    assert (
        await scalar(committed, "SELECT count(*) FROM outbox_events WHERE type LIKE 'users.%'") == 0
    )


async def test_unknown_tenant_and_unconfigured_wecom(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant
) -> None:
    """Answered exactly like a bad signature: the routes do not tell which slugs exist."""
    from shared.db import unit_of_work
    from tests.helpers import make_tenant

    async with unit_of_work(committed.sessionmaker) as session:
        unconfigured = (await make_tenant(session)).slug
    bad = corp.callback(contact_event("add_external_contact"))
    bad["params"]["msg_signature"] = "f" * 40
    expected = await post(committed_client, bad)
    assert expected.status_code == 401 and expected.json()["error"]["code"] == "invalid_signature"
    timestamp = str(int(time.time()))
    echostr = corp.crypto.encrypt("echo")
    verify = {
        "msg_signature": corp.crypto.signature(timestamp, "n1", echostr),
        "timestamp": timestamp,
        "nonce": "n1",
        "echostr": echostr,
    }
    # "nobody" takes the fast path; "NoBody" (not a slug) falls through to the routed endpoint.
    for slug in ("nobody", "NoBody", unconfigured):
        for request in (corp.callback(contact_event("add_external_contact")), bad):
            answer = await post(committed_client, {**request, "url": f"/v1/wecom/{slug}/callback"})
            assert (answer.status_code, answer.json()) == (401, expected.json()), slug
        answer = await committed_client.get(f"/v1/wecom/{slug}/callback", params=verify)
        assert (answer.status_code, answer.json()) == (401, expected.json()), slug
    assert await scalar(committed, "SELECT count(*) FROM inbound_events") == 0


async def test_replayed_and_concurrent_callbacks_apply_once(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant
) -> None:
    xml = contact_event("add_external_contact", external="wmDUP")
    first = corp.callback(xml)
    responses = await asyncio.gather(
        *(post(committed_client, corp.callback(xml)) for _ in range(20))
    )
    responses.append(await post(committed_client, first))
    responses.append(await post(committed_client, first))  # the very same bytes again
    assert {r.text for r in responses} == {"success"}
    assert await scalar(committed, "SELECT count(*) FROM inbound_events") == 1
    await process_all(committed)
    assert await scalar(committed, "SELECT count(*) FROM contacts") == 1
    assert await outbox_types(committed) == ["contact.added"]
    # A later, genuine re-add (new CreateTime) is a new event.
    await post(
        committed_client,
        corp.callback(contact_event("add_external_contact", external="wmDUP", at=1700009999)),
    )
    assert await scalar(committed, "SELECT count(*) FROM inbound_events") == 2


async def test_every_wecom_event_type(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant
) -> None:
    sequence = [
        contact_event("add_half_external_contact", external="wmH", user="lisi", at=1700000001),
        contact_event("add_external_contact", external="wmA", at=1700000002, State="ch1"),
        contact_event("edit_external_contact", external="wmA", at=1700000003),
        contact_event(
            "transfer_fail",
            external="wmA",
            user="wangwu",
            at=1700000004,
            FailReason="customer_refused",
        ),
        contact_event("del_external_contact", external="wmA", at=1700000005),
        contact_event("add_external_contact", external="wmB", at=1700000006),
        contact_event("del_follow_user", external="wmB", at=1700000007),
        chat_event("create", at=1700000008),
        chat_event(
            "update",
            at=1700000009,
            UpdateDetail="add_member",
            JoinScene="1",
            MemChangeCnt="2",
            members=["wmG1", "zhangsan"],
        ),
        chat_event(
            "update",
            at=1700000010,
            UpdateDetail="del_member",
            QuitScene="0",
            MemChangeCnt="1",
            members=["wmG1"],
        ),
        chat_event("dismiss", at=1700000011),
        tag_event("create", at=1700000012),
        tag_event("delete", at=1700000013),
        "<xml><ToUserName>ww</ToUserName><MsgType>event</MsgType><Event>some_future_event</Event><CreateTime>1</CreateTime></xml>",
    ]
    for xml in sequence:
        response = await post(committed_client, corp.callback(xml))
        assert response.text == "success", response.text
    await process_all(committed)
    async with committed.engine.connect() as conn:
        outcomes = [
            r[0] for r in await conn.execute(text("SELECT outcome FROM inbound_events ORDER BY id"))
        ]
        follows = dict(
            (
                await conn.execute(
                    text(
                        "SELECT i.contact_id::text || f.staff_userid, f.status "
                        "FROM contact_follows f "
                        "JOIN contact_identities i ON i.contact_id = f.contact_id"
                    )
                )
            ).all()
        )
        stages = {r[0] for r in await conn.execute(text("SELECT lifecycle_stage FROM contacts"))}
        group = (await conn.execute(text("SELECT status FROM customer_groups"))).scalar()
        members = (
            await conn.execute(
                text("SELECT member_id, left_at IS NOT NULL FROM group_members ORDER BY member_id")
            )
        ).all()
    assert outcomes == [
        "contact.add_half_external_contact",
        "contact.add_external_contact",
        "contact.edit_external_contact",
        "contact.transfer_fail",
        "contact.del_external_contact",
        "contact.add_external_contact",
        "contact.del_follow_user",
        "chat.create",
        "chat.update",
        "chat.update",
        "chat.dismiss",
        "tag.create",
        "tag.delete",
        "ignored",
    ]
    assert sorted(follows.values()) == ["deleted_by_contact", "deleted_by_staff", "half"]
    assert "churned" in stages
    assert group == "dismissed"
    assert [tuple(m) for m in members] == [("wmG1", True), ("zhangsan", True)]
    assert await outbox_types(committed) == [
        "contact.half_added",
        "contact.added",
        "contact.updated",
        "contact.transfer_failed",
        "contact.removed_by_staff",
        "contact.lost",
        "contact.added",
        "contact.lost",
        "group.created",
        "group.joined",
        "group.left",
        "group.dismissed",
        "wecom.tag_changed",
        "wecom.tag_changed",
    ]
    timeline = await scalar(committed, "SELECT count(*) FROM contact_events")
    assert timeline == 9, "7 contact changes + a join and a leave"


async def test_oversized_callback_answers_413_and_stores_nothing(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant
) -> None:
    request = corp.callback(contact_event("add_external_contact"))
    request["content"] = b"<xml>" + b"x" * (8 * 1024 * 1024 + 1) + b"</xml>"
    response = await post(committed_client, request)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert await scalar(committed, "SELECT count(*) FROM inbound_events") == 0


async def test_accepted_callbacks_are_logged_as_a_summary(
    committed: Runtime, corp: WeComTenant, caplog: pytest.LogCaptureFixture
) -> None:
    """A flood of accepted callbacks is one access-log line per interval; a rejected
    callback still has a line of its own."""
    app = create_app(SERVICES, committed)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    with caplog.at_level(logging.INFO, logger="scrm.access"):
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            for n in range(3):
                xml = contact_event("add_external_contact", ExternalUserID=f"wmLog{n}")
                assert (await post(client, corp.callback(xml))).status_code == 200
            forged = corp.callback(contact_event("add_external_contact"))
            forged["params"]["msg_signature"] = "0" * 40
            assert (await post(client, forged)).status_code == 401
        lines = [r for r in caplog.records if r.name == "scrm.access"]
        assert [(r.status, r.getMessage()) for r in lines] == [  # type: ignore[attr-defined]
            (401, f"POST /v1/wecom/{corp.slug}/callback 401")
        ]
        app.access_summary.flush()
    summary = [r for r in caplog.records if r.name == "scrm.access"][-1]
    assert summary.getMessage() == "POST /v1/wecom/{tenant_slug}/callback 200 x3 in 10s"
    assert summary.count == 3 and summary.max_ms >= summary.avg_ms > 0  # type: ignore[attr-defined]
