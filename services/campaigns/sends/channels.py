"""The channels' providers: how a claimed send reaches the contact (or another system).

`in_app` is delivered inside the database (the contact's inbox, in the dispatcher's
claim transaction). `webhook` POSTs the send's body to the step's URL, signed like
the webhooks this product accepts: `X-Scrm-Timestamp` and `X-Scrm-Signature:
sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>` with the tenant's outbound
webhook secret (campaign settings), and the send's key in `X-Scrm-Delivery`, which
stays the same across retries so the receiver can drop a repeat. A 2xx answer is
sent; a 4xx other than 408/429 fails the send at once; anything else is retried
with backoff.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.campaigns.governor.planner import settings_of
from services.campaigns.sends.http import shared_client
from shared.db import unit_of_work
from shared.runtime import Runtime

if TYPE_CHECKING:
    from services.campaigns.sends.dispatch import Send

# The channels whose provider is wired here; sends on the others wait planned.
READY = ("in_app", "webhook", "wecom_welcome", "sms")
IN_DATABASE = ("in_app",)
WEBHOOK_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class Result:
    status: str  # sent, delivered, failed, skipped, retry
    reason: str | None = None
    error: str | None = None
    provider_ref: str | None = None


_INBOX = text(
    """
    INSERT INTO contact_inbox (tenant_id, contact_id, send_id, text)
    VALUES (:tenant, :contact, :send, :text)
    ON CONFLICT (send_id) DO NOTHING
    """
)
_SENT_INSIDE = text(
    """
    UPDATE campaign_sends SET status = 'delivered', sent_at = :now, delivered_at = :now,
           attempts = attempts + 1, updated_at = :now
     WHERE id = :id
    """
)


async def deliver_inside(session: AsyncSession, send: Send, now: datetime) -> None:
    await session.execute(
        _INBOX,
        {
            "tenant": send.tenant_id,
            "contact": send.contact_id,
            "send": send.id,
            "text": send.content.get("text", ""),
        },
    )
    await session.execute(_SENT_INSIDE, {"id": send.id, "now": now})


def sign(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


async def call(runtime: Runtime, send: Send) -> Result:
    if send.channel == "webhook":
        return await _webhook(runtime, send)
    if send.channel == "wecom_welcome":
        return await _welcome(runtime, send)
    if send.channel == "sms":
        return await _sms(runtime, send)
    return Result("retry", error=f"no provider for {send.channel}")


async def _sms(runtime: Runtime, send: Send) -> Result:
    """One SMS through the tenant's gateway. A send claimed again (`sending`: its
    answer was lost, or its worker died) first asks the gateway for the messages of its
    key, and takes the one it finds instead of sending a second."""
    from services.campaigns.sends.sms import SmsClient, SmsRefused, SmsUnavailable

    async with unit_of_work(runtime.sessionmaker) as session:
        settings = await settings_of(session, send.tenant_id)
    if settings.sms_provider is None:
        return Result("failed", reason="no_sms")
    client = SmsClient(settings.sms_provider, http=shared_client())
    try:
        if send.status == "sending":
            found = await client.find(send.key)
            if found:
                return Result("sent", provider_ref=found[0].id)
        accepted = await client.send(
            str(send.content["phone"]), str(send.content["text"]), send.key
        )
    except SmsRefused as exc:
        return Result("failed", reason="rejected", error=str(exc))
    except SmsUnavailable as exc:
        return Result("retry", error=str(exc))
    finally:
        await client.aclose()
    return Result("sent", provider_ref=accepted.id)


async def _welcome(runtime: Runtime, send: Send) -> Result:
    """send_welcome_msg with the contact's WelcomeCode, one attempt. The code is valid
    for 20 s and usable once: a send claimed again after its lease (a worker died
    during the call) past that is given up (`welcome_code_expired`); a second call
    within it is harmless, as WeCom refuses a used code."""
    from services import users
    from services.campaigns import clock
    from services.campaigns.governor.planner import WELCOME_CODE_SECONDS
    from services.campaigns.sends import wecom_api
    from services.users.wecom_client import WeComApiError

    if clock.now() - send.created_at > timedelta(seconds=WELCOME_CODE_SECONDS):
        return Result("failed", reason="welcome_code_expired")
    async with unit_of_work(runtime.sessionmaker) as session:
        client = await users.wecom_api_client(
            session, send.tenant_id, max_retries=0, http=shared_client()
        )
    if client is None:
        return Result("failed", reason="no_wecom")
    try:
        await wecom_api.send_welcome_msg(
            client, str(send.content["welcome_code"]), send.content["text"]
        )
    except WeComApiError as exc:
        return Result("failed", reason=f"wecom_{exc.errcode}", error=str(exc))
    finally:
        await client.aclose()
    return Result("sent")


async def _webhook(runtime: Runtime, send: Send) -> Result:
    async with unit_of_work(runtime.sessionmaker) as session:
        settings = await settings_of(session, send.tenant_id)
    secret = settings.webhook_secret
    if not secret:
        return Result("failed", reason="no_webhook_secret")
    body = json.dumps(send.content["body"], separators=(",", ":"), ensure_ascii=False).encode()
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "X-Scrm-Timestamp": timestamp,
        "X-Scrm-Signature": sign(secret, timestamp, body),
        "X-Scrm-Delivery": send.key,
    }
    try:
        answer = await shared_client().post(
            send.content["url"], content=body, headers=headers, timeout=WEBHOOK_TIMEOUT_SECONDS
        )
    except httpx.HTTPError as exc:
        return Result("retry", error=f"{type(exc).__name__}: {exc}")
    if answer.is_success:
        return Result("delivered")
    if 400 <= answer.status_code < 500 and answer.status_code not in (408, 429):
        return Result("failed", reason="rejected", error=f"HTTP {answer.status_code}")
    return Result("retry", error=f"HTTP {answer.status_code}")
