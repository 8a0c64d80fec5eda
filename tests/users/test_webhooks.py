"""Signed webhooks and the event API: signatures, rotation, batches, duplicates, processing."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from shared.db import unit_of_work
from shared.runtime import Runtime
from tests.helpers import bearer, make_key
from tests.users.support import WeComTenant, post, process_all, wecom_tenant


@pytest.fixture
async def corp(committed: Runtime) -> WeComTenant:
    return await wecom_tenant(committed)


def order(event_id: str, amount: int = 12900, **contact: str) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "type": "order.paid",
        "occurred_at": "2026-11-20T10:00:00+08:00",
        "contact": contact or {"phone": "13812341234"},
        "properties": {"order_id": f"SO-{event_id}", "amount_fen": amount},
    }


async def rows(runtime: Runtime, sql: str) -> list[Any]:
    async with runtime.engine.connect() as conn:
        return [tuple(r) for r in await conn.execute(text(sql))]


async def test_signed_batch_is_stored_processed_and_published(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant
) -> None:
    batch = {
        "events": [
            order("e1"),
            order("e2", 500),
            {**order("e3"), "type": "checkin", "properties": {}},
        ]
    }
    response = await post(committed_client, corp.signed(batch))
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 3, "duplicates": 0, "rejected": []}
    await process_all(committed)
    assert await rows(committed, "SELECT count(*) FROM contacts") == [(1,)]
    published = await rows(
        committed,
        "SELECT type, payload->>'event_id', payload->'properties'->>'amount_fen' "
        "FROM outbox_events WHERE type IN ('order.paid', 'checkin') ORDER BY id",
    )
    assert published == [
        ("order.paid", "e1", "12900"),
        ("order.paid", "e2", "500"),
        ("checkin", "e3", None),
    ]
    timeline = await rows(
        committed, "SELECT type, source_event_id FROM contact_events ORDER BY occurred_at, id"
    )
    assert [t[1] for t in timeline] == ["e1", "e2", "e3"]


async def test_repeats_are_accepted_and_ignored(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant
) -> None:
    first = await post(committed_client, corp.signed(order("dup-1")))
    again = await post(
        committed_client, corp.signed({"events": [order("dup-1"), order("dup-1"), order("new-1")]})
    )
    assert first.json()["accepted"] == 1
    assert again.json() == {"accepted": 1, "duplicates": 2, "rejected": []}
    # The same event through the API with an operator key is the same event.
    async with unit_of_work(committed.sessionmaker) as session:
        from shared.models import Tenant

        tenant = await session.get(Tenant, corp.tenant_id)
        operator = await make_key(session, tenant, "operator")
    via_api = await committed_client.post(
        "/v1/events", json=order("dup-1"), headers=bearer(operator)
    )
    assert via_api.status_code == 202 and via_api.json()["duplicates"] == 1
    await process_all(committed)
    assert await rows(
        committed, "SELECT count(*) FROM outbox_events WHERE type = 'order.paid'"
    ) == [(2,)]


async def test_per_event_errors_come_back_with_their_index(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant
) -> None:
    bad_amount = order("b1")
    bad_amount["properties"]["amount_fen"] = 12.5
    batch = {
        "events": [
            order("ok-1"),
            bad_amount,
            {**order("b2"), "type": "made.up"},
            {**order("b3"), "contact": {}},
            {**order("b4"), "occurred_at": "2026-11-20T10:00:00"},  # no timezone
            "not an object",
            order("ok-2"),
        ]
    }
    response = await post(committed_client, corp.signed(batch))
    assert response.status_code == 202
    body = response.json()
    assert body["accepted"] == 2
    assert [(r["index"], r["event_id"]) for r in body["rejected"]] == [
        (1, "b1"),
        (2, "b2"),
        (3, "b3"),
        (4, "b4"),
        (5, None),
    ]
    assert all(r["errors"] for r in body["rejected"])
    all_bad = await post(committed_client, corp.signed({"events": [bad_amount]}))
    assert all_bad.status_code == 422
    assert all_bad.json()["error"]["details"][0]["index"] == 0
    assert await rows(committed, "SELECT count(*) FROM inbound_events") == [(2,)]


@pytest.mark.parametrize("problem", ["signature", "secret", "stale", "headers", "json", "too_many"])
async def test_rejected_webhooks_store_nothing(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant, problem: str
) -> None:
    request = corp.signed(order("x1"))
    expected = 401
    if problem == "signature":
        request["headers"]["X-Scrm-Signature"] = "sha256=" + "0" * 64
    elif problem == "secret":
        request = corp.signed(order("x1"), secret="whsec_not_ours")
    elif problem == "stale":
        request = corp.signed(order("x1"), at=int(time.time()) - 3600)
        expected = 400
    elif problem == "headers":
        del request["headers"]["X-Scrm-Signature"]
    elif problem == "json":
        request = corp.signed(order("x1"))
        request["content"] = b"{broken"
        # Sign the broken body properly: only the JSON check can refuse it.
        import hashlib
        import hmac

        ts = request["headers"]["X-Scrm-Timestamp"]
        mac = hmac.new(
            corp.webhook_secret.encode(), ts.encode() + b"." + b"{broken", hashlib.sha256
        )
        request["headers"]["X-Scrm-Signature"] = "sha256=" + mac.hexdigest()
        expected = 400
    elif problem == "too_many":
        request = corp.signed({"events": [order(f"m{i}") for i in range(1001)]})
        expected = 422
    response = await post(committed_client, request)
    assert response.status_code == expected, response.text
    assert "error" in response.json()
    assert await rows(committed, "SELECT count(*) FROM inbound_events") == [(0,)]


async def test_secret_rotation_keeps_two_active(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant
) -> None:
    old = corp.webhook_secret
    created = await committed_client.post("/v1/users/webhook-secrets", headers=bearer(corp.admin))
    assert created.status_code == 201
    new = created.json()["secret"]
    assert (await post(committed_client, corp.signed(order("r1"), secret=old))).status_code == 202
    assert (await post(committed_client, corp.signed(order("r2"), secret=new))).status_code == 202
    third = (
        await committed_client.post("/v1/users/webhook-secrets", headers=bearer(corp.admin))
    ).json()
    assert (await post(committed_client, corp.signed(order("r3"), secret=old))).status_code == 401
    assert (
        await post(committed_client, corp.signed(order("r4"), secret=third["secret"]))
    ).status_code == 202
    listed = (
        await committed_client.get("/v1/users/webhook-secrets", headers=bearer(corp.admin))
    ).json()
    assert [s["revoked_at"] is None for s in listed] == [True, True, False]
    assert all("secret" not in s for s in listed)
    revoked = await committed_client.delete(
        f"/v1/users/webhook-secrets/{third['id']}", headers=bearer(corp.admin)
    )
    assert revoked.status_code == 200
    assert (
        await post(committed_client, corp.signed(order("r5"), secret=third["secret"]))
    ).status_code == 401


async def test_event_api_needs_an_operator_key(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant
) -> None:
    from shared.models import Tenant

    async with unit_of_work(committed.sessionmaker) as session:
        tenant = await session.get(Tenant, corp.tenant_id)
        analyst = await make_key(session, tenant, "analyst")
    assert (await committed_client.post("/v1/events", json=order("a1"))).status_code == 401
    assert (
        await committed_client.post("/v1/events", json=order("a1"), headers=bearer(analyst))
    ).status_code == 403
    ok = await committed_client.post("/v1/events", json=order("a1"), headers=bearer(corp.admin))
    assert ok.status_code == 202


async def test_consent_events_change_consent(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant
) -> None:
    opt_out = {
        "event_id": "c1",
        "type": "consent.opt_out",
        "occurred_at": "2026-11-20T10:00:00+08:00",
        "contact": {"phone": "13900000000"},
        "properties": {"channel": "sms"},
    }
    await post(committed_client, corp.signed(opt_out))
    await process_all(committed)
    [(contact_id,)] = await rows(committed, "SELECT id FROM contacts")
    consent = (
        await committed_client.get(f"/v1/contacts/{contact_id}/consent", headers=bearer(corp.admin))
    ).json()
    assert consent["may_message"]["sms"] is False and consent["may_message"]["wecom"] is True
    assert consent["history"][0]["source"] == "event:c1"
    back = await committed_client.post(
        f"/v1/contacts/{contact_id}/consent",
        json={"channel": "sms", "status": "opted_in"},
        headers=bearer(corp.admin),
    )
    assert back.status_code == 201
    consent = (
        await committed_client.get(f"/v1/contacts/{contact_id}/consent", headers=bearer(corp.admin))
    ).json()
    assert consent["may_message"]["sms"] is True and len(consent["history"]) == 2


async def test_unknown_tenant_is_answered_like_a_bad_signature(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant
) -> None:
    """The route is unauthenticated: its answers must not tell which tenant slugs exist."""
    from tests.helpers import make_tenant

    async with unit_of_work(committed.sessionmaker) as session:
        secretless = (await make_tenant(session)).slug
    bad_signature = corp.signed(order("u1"))
    bad_signature["headers"]["X-Scrm-Signature"] = "sha256=" + "0" * 64
    expected = await post(committed_client, bad_signature)
    assert expected.status_code == 401, expected.text
    assert expected.json()["error"]["code"] == "invalid_signature"
    # "nope" takes the fast path; "NoPe" (not a slug) falls through to the routed endpoint.
    for slug in ("nope", "NoPe", secretless):
        for signed in (corp.signed(order("u2")), bad_signature):
            request = {**signed, "url": f"/v1/webhooks/{slug}/events"}
            answer = await post(committed_client, request)
            assert (answer.status_code, answer.json()) == (401, expected.json()), slug
        # Refusals that come before the signature are the same for every slug too.
        headerless = {**corp.signed(order("u3")), "url": f"/v1/webhooks/{slug}/events"}
        headerless["headers"] = {"content-type": "application/json"}
        known = {**headerless, "url": f"/v1/webhooks/{corp.slug}/events"}
        assert (await post(committed_client, headerless)).json() == (
            await post(committed_client, known)
        ).json()
    assert await rows(committed, "SELECT count(*) FROM inbound_events") == [(0,)]
