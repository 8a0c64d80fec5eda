"""SMS through the provider client against a fake gateway: signed requests, one message
per send also when its answer is lost, delivery receipts verified and applied."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from shared.db import unit_of_work
from shared.runtime import Runtime
from tests.campaigns.fake_sms import FakeSms
from tests.campaigns.test_runner import Moving, _enrol, _launch, _run, _setup, moving
from tests.campaigns.test_wecom_sends import _sends

__all__ = ["moving"]


@pytest.fixture
async def gateway() -> AsyncIterator[FakeSms]:
    async with FakeSms() as server:
        yield server


async def _with_phones(runtime: Runtime, tenant_id: Any, contacts: list[Any]) -> None:
    from services.users.identity import identity_context
    from services.users.models import ContactIdentity

    async with unit_of_work(runtime.sessionmaker) as session:
        for i, contact in enumerate(contacts):
            phone = f"+861380013{i:04d}"
            session.add(
                ContactIdentity(
                    tenant_id=tenant_id,
                    contact_id=contact,
                    kind="phone",
                    value_bidx=runtime.cipher.blind_index(
                        phone, kind="phone", tenant=str(tenant_id)
                    ),
                    value_enc=runtime.cipher.encrypt(
                        phone, context=identity_context(tenant_id, "phone")
                    ),
                    source="webhook",
                )
            )


async def test_sms_is_signed_sent_once_and_its_receipts_applied(
    committed: Runtime,
    committed_client: httpx.AsyncClient,
    gateway: FakeSms,
    moving: Moving,
) -> None:
    tenant, h, contacts = await _setup(committed, ["Ann", "Ben"])
    await _with_phones(committed, tenant.id, contacts)
    provider = {
        "base_url": gateway.base_url,
        "api_key": "sms-key",
        "secret": gateway.secret,
        "sign_name": "【茶铺】",
    }
    put = await committed_client.put(
        "/v1/campaigns/settings", json={"quiet_hours": None, "sms_provider": provider}, headers=h
    )
    assert put.status_code == 200, put.text
    assert put.json()["sms_provider"]["secret"] == "****" + gateway.secret[-4:]
    # Sent back masked, the stored secret is kept.
    again = await committed_client.put(
        "/v1/campaigns/settings",
        json={"quiet_hours": None, "sms_provider": put.json()["sms_provider"]},
        headers=h,
    )
    assert again.status_code == 200
    journey = {
        "name": "sms",
        "trigger": {"type": "manual"},
        "steps": [
            {
                "id": "text",
                "type": "action",
                "action": "send",
                "channel": "sms",
                "content": {"text": "{{name}}, your tea is ready"},
            }
        ],
    }
    cid = await _launch(committed_client, h, journey)
    gateway.lose_answers(1)  # the first message is made, its answer lost
    await _enrol(committed_client, h, cid, contacts)
    await _run(committed)
    assert len(gateway.messages) == 2
    assert gateway.refused_signatures == 0
    assert await _sends(committed, cid) == {"sent": 1, "sending": 1}
    moving.advance(seconds=6)  # the retry's backoff
    await _run(committed)
    assert len(gateway.messages) == 2, "the retry found the message the lost answer made"
    assert gateway.calls["GET /v1/messages"] == 1
    assert await _sends(committed, cid) == {"sent": 2}
    assert sorted(m["text"] for m in gateway.messages) == [
        "Ann, your tea is ready",
        "Ben, your tea is ready",
    ]
    assert {m["sign_name"] for m in gateway.messages} == {"【茶铺】"}
    # Receipts: verified, applied once; a forged one is refused and changes nothing.
    first, second = gateway.messages
    url = f"/v1/sms/{tenant.slug}/receipts"
    body = json.dumps({"id": first["id"], "reference": first["reference"], "status": "delivered"})
    forged = await committed_client.post(
        url,
        content=body,
        headers={**gateway.sign(body.encode()), "X-Signature": "sha256=" + "0" * 64},
    )
    assert forged.status_code == 401
    assert forged.json()["error"]["code"] == "invalid_signature"
    unknown = await committed_client.post(
        "/v1/sms/no-such-tenant/receipts", content=body, headers=gateway.sign(body.encode())
    )
    assert unknown.json() == forged.json()
    ok = await committed_client.post(url, content=body, headers=gateway.sign(body.encode()))
    assert ok.status_code == 200 and ok.json() == {"updated": 1}
    failed = json.dumps({"id": second["id"], "status": "failed", "error": "UNDELIV"})
    assert (
        await committed_client.post(url, content=failed, headers=gateway.sign(failed.encode()))
    ).json() == {"updated": 1}
    bad = await committed_client.post(url, content=b"{}", headers=gateway.sign(b"{}"))
    assert bad.status_code == 422
    assert await _sends(committed, cid) == {"delivered": 1, "failed:provider_failed": 1}
    async with committed.engine.connect() as conn:
        refs = await conn.scalar(
            text("SELECT count(DISTINCT provider_ref) FROM campaign_sends WHERE campaign_id = :c"),
            {"c": cid},
        )
    assert refs == 2
