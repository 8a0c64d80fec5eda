"""Building what WeCom and integrations send, signed as they would sign it."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from services.users import service
from services.users.wecom_crypto import WeComCrypto
from shared.db import unit_of_work
from shared.runtime import Runtime
from tests.helpers import make_key, make_tenant
from tests.shared.bus_support import relay_all, schedule_and_work, work_until_idle

CORP_ID = "ww0123456789abcdef"
TOKEN = "QDG6eK"
AES_KEY = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"


@dataclass
class WeComTenant:
    tenant_id: uuid.UUID
    slug: str
    admin: str
    crypto: WeComCrypto
    webhook_secret: str

    def callback(
        self, xml: str, *, at: int | None = None, nonce: str | None = None
    ) -> dict[str, Any]:
        """Arguments for client.post(...) of a callback as WeCom sends it."""
        timestamp = str(at if at is not None else int(time.time()))
        nonce = nonce or uuid.uuid4().hex[:10]
        body, signature = self.crypto.build_callback(xml, timestamp=timestamp, nonce=nonce)
        return {
            "url": f"/v1/wecom/{self.slug}/callback",
            "params": {"msg_signature": signature, "timestamp": timestamp, "nonce": nonce},
            "content": body,
            "headers": {"content-type": "text/xml"},
        }

    def signed(
        self, payload: object, *, secret: str | None = None, at: int | None = None
    ) -> dict[str, Any]:
        body = json.dumps(payload).encode()
        timestamp = str(at if at is not None else int(time.time()))
        mac = hmac.new(
            (secret or self.webhook_secret).encode(),
            timestamp.encode() + b"." + body,
            hashlib.sha256,
        )
        return {
            "url": f"/v1/webhooks/{self.slug}/events",
            "content": body,
            "headers": {
                "content-type": "application/json",
                "X-Scrm-Timestamp": timestamp,
                "X-Scrm-Signature": f"sha256={mac.hexdigest()}",
            },
        }


async def wecom_tenant(
    runtime: Runtime, slug: str | None = None, app_secret: str | None = None
) -> WeComTenant:
    async with unit_of_work(runtime.sessionmaker) as session:
        tenant = await make_tenant(session, slug)
        admin = await make_key(session, tenant, "admin")
        await service.configure_wecom(
            session,
            runtime.cipher,
            tenant.id,
            corp_id=CORP_ID,
            token=TOKEN,
            encoding_aes_key=AES_KEY,
            secret=app_secret,
        )
        _, secret = await service.create_webhook_secret(session, runtime.cipher, tenant.id)
    return WeComTenant(tenant.id, tenant.slug, admin, WeComCrypto(TOKEN, AES_KEY, CORP_ID), secret)


def contact_event(
    change: str,
    *,
    user: str = "zhangsan",
    external: str = "wmABC",
    at: int = 1700000000,
    **extra: str,
) -> str:
    fields = {
        "ToUserName": CORP_ID,
        "FromUserName": "sys",
        "CreateTime": str(at),
        "MsgType": "event",
        "Event": "change_external_contact",
        "ChangeType": change,
        "UserID": user,
        "ExternalUserID": external,
        **extra,
    }
    return "<xml>" + "".join(f"<{k}><![CDATA[{v}]]></{k}>" for k, v in fields.items()) + "</xml>"


def chat_event(
    change: str,
    chat_id: str = "wrChat1",
    *,
    at: int = 1700000000,
    members: list[str] | None = None,
    **extra: str,
) -> str:
    fields = {
        "ToUserName": CORP_ID,
        "FromUserName": "sys",
        "CreateTime": str(at),
        "MsgType": "event",
        "Event": "change_external_chat",
        "ChatId": chat_id,
        "ChangeType": change,
        **extra,
    }
    inner = "".join(f"<{k}><![CDATA[{v}]]></{k}>" for k, v in fields.items())
    if members is not None:
        inner += (
            "<MemChangeList>"
            + "".join(f"<Item><![CDATA[{m}]]></Item>" for m in members)
            + "</MemChangeList>"
        )
    return f"<xml>{inner}</xml>"


def tag_event(change: str, tag_id: str = "et123", *, at: int = 1700000000) -> str:
    fields = {
        "ToUserName": CORP_ID,
        "FromUserName": "sys",
        "CreateTime": str(at),
        "MsgType": "event",
        "Event": "change_external_tag",
        "Id": tag_id,
        "TagType": "tag",
        "ChangeType": change,
    }
    return "<xml>" + "".join(f"<{k}><![CDATA[{v}]]></{k}>" for k, v in fields.items()) + "</xml>"


async def process_all(runtime: Runtime) -> None:
    """Relay and run the users worker until nothing is left (jobs due now included)."""
    for _ in range(3):
        await relay_all(runtime)
        await work_until_idle(runtime, "users")
        await schedule_and_work(runtime, "users")


async def post(client: httpx.AsyncClient, request: dict[str, Any]) -> httpx.Response:
    return await client.post(**request)
