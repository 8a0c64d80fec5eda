"""A referral's course over HTTP and the real bus, on a simulated clock: attributed by
`referral.registered` (device id and IP hashed at ingest), qualified by the invitee's
first paid order, rewarded when the hold ends (invite points, tiers, welcome reward,
each once), or revoked within the hold (the invitee deletes the staff member, a full
refund) or for fraud, with what it paid clawed back through the ledger."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from services.points import clock
from services.points.referrals import lifecycle, tasks
from shared.db import unit_of_work
from shared.events import publish_many
from shared.relay import DELIVER_JOB
from shared.runtime import Runtime
from shared.scheduler import Scheduler, schedule
from tests.clock import wait_until
from tests.points.support import Brand, balance, make_brand, make_member, rows, verify
from tests.shared.bus_support import relay_all, schedule_and_work, work_until_idle
from tests.users.support import contact_event, post, process_all, wecom_tenant

# Now, to the hour: jobs the code schedules at the service clock run at once.
T0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


class SimulatedClock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def move(self, **delta: float) -> None:
        self.at += timedelta(**delta)


@pytest.fixture
def sim() -> Iterator[SimulatedClock]:
    now = SimulatedClock(T0)
    with clock.use(lambda: now.at):
        yield now


async def _code(client: httpx.AsyncClient, brand: Brand, contact: uuid.UUID) -> str:
    answer = await client.get(f"/v1/points/referrals/codes/{contact}", headers=brand.headers())
    assert answer.status_code == 200, answer.text
    return str(answer.json()["code"])


def _event(kind: str, customer: str, at: datetime, **properties: Any) -> dict[str, Any]:
    return {
        "event_id": uuid.uuid4().hex,
        "type": kind,
        "occurred_at": at.isoformat(),
        "contact": {"shop_customer_id": customer},
        "properties": properties,
    }


async def _send(
    runtime: Runtime, client: httpx.AsyncClient, brand: Brand, *events: dict[str, Any]
) -> None:
    answer = await client.post("/v1/events", json={"events": list(events)}, headers=brand.headers())
    assert answer.status_code == 202 and not answer.json()["rejected"], answer.text
    await _settle(runtime)


async def _settle(runtime: Runtime) -> None:
    """The users worker, then points (twice: points' own events feed points)."""
    await process_all(runtime)
    for _ in range(2):
        await relay_all(runtime)
        await work_until_idle(runtime, "points")


async def _run_hold_job(runtime: Runtime) -> None:
    async with unit_of_work(runtime.sessionmaker) as session:
        await schedule(session, service="points", job="reward_referrals", due_at=datetime.now(UTC))
    await schedule_and_work(runtime, "points")
    await _settle(runtime)


async def _referral(runtime: Runtime, brand: Brand, invitee: uuid.UUID) -> dict[str, Any]:
    async with runtime.engine.connect() as conn:
        row = (
            (
                await conn.execute(
                    text(
                        "SELECT * FROM referrals WHERE tenant_id = :t AND invitee_id = :c "
                        "AND status <> 'refused'"
                    ),
                    {"t": brand.tenant_id, "c": invitee},
                )
            )
            .mappings()
            .one()
        )
    return dict(row)


async def _rewards(runtime: Runtime, brand: Brand) -> list[tuple[Any, ...]]:
    return await rows(
        runtime,
        "SELECT purpose, contact_id, kind, tier_count, points, value_fen, status "
        "FROM referral_rewards WHERE tenant_id = :t ORDER BY id",
        t=brand.tenant_id,
    )


async def _transitions(runtime: Runtime, referral_id: int) -> list[tuple[Any, ...]]:
    return await rows(
        runtime,
        "SELECT from_status, to_status, cause FROM referral_transitions "
        "WHERE referral_id = :r ORDER BY id",
        r=referral_id,
    )


async def _events_of(runtime: Runtime, kind: str) -> list[dict[str, Any]]:
    found = await rows(
        runtime, "SELECT payload FROM outbox_events WHERE type = :k ORDER BY id", k=kind
    )
    return [r[0] for r in found]


async def _register(
    runtime: Runtime,
    client: httpx.AsyncClient,
    brand: Brand,
    code: str,
    customer: str,
    at: datetime,
    **properties: Any,
) -> uuid.UUID:
    await _send(
        runtime, client, brand, _event("referral.registered", customer, at, code=code, **properties)
    )
    ids = await rows(
        runtime,
        "SELECT invitee_id FROM referrals WHERE tenant_id = :t ORDER BY id DESC LIMIT 1",
        t=brand.tenant_id,
    )
    return uuid.UUID(str(ids[0][0]))


async def _invited_and_paid(
    runtime: Runtime, client: httpx.AsyncClient, brand: Brand, code: str, prefix: str, n: int
) -> None:
    """`n` invitees (`<prefix><i>`) registered through the code at T0, each then paying
    an order (`<PREFIX>-<i>`, 1 yuan)."""
    await _send(
        runtime,
        client,
        brand,
        *[_event("referral.registered", f"{prefix}{i}", T0, code=code) for i in range(n)],
    )
    await _send(
        runtime,
        client,
        brand,
        *[
            _event(
                "order.paid", f"{prefix}{i}", T0, order_id=f"{prefix.upper()}-{i}", amount_fen=100
            )
            for i in range(n)
        ],
    )


async def test_pending_qualified_rewarded_across_the_hold(
    committed: Runtime, committed_client: httpx.AsyncClient, sim: SimulatedClock
) -> None:
    brand = await make_brand(committed)
    alice = await make_member(committed, brand)
    code = await _code(committed_client, brand, alice)
    bob = await _register(
        committed,
        committed_client,
        brand,
        code,
        "bob",
        T0,
        device_id="idfa-4b1f0c2e",
        ip="203.0.113.24",
    )
    referral = await _referral(committed, brand, bob)
    assert (referral["inviter_id"], referral["status"], referral["source"]) == (
        alice,
        "pending",
        "event",
    )
    # The device id and IP are kept only as keyed hashes, nowhere in plain.
    assert len(referral["device_hash"]) == 32 and len(referral["ip_hash"]) == 32
    stored = await rows(
        committed,
        "SELECT count(*) FROM outbox_events WHERE payload::text LIKE '%idfa-4b1f0c2e%' "
        "OR payload::text LIKE '%203.0.113.24%'",
    )
    assert stored == [(0,)]
    assert await _rewards(committed, brand) == [("welcome", bob, "coupon", None, 0, 500, "granted")]
    # The first paid order qualifies it; the hold runs 7 days from the payment.
    paid_at = T0 + timedelta(hours=2)
    await _send(
        committed,
        committed_client,
        brand,
        _event("order.paid", "bob", paid_at, order_id="SO-1", amount_fen=12900),
        _event("order.paid", "bob", paid_at + timedelta(hours=1), order_id="SO-2", amount_fen=100),
    )
    referral = await _referral(committed, brand, bob)
    assert (referral["status"], referral["order_id"], referral["order_amount_fen"]) == (
        "qualified",
        "SO-1",
        12900,
    )
    assert referral["hold_until"] == paid_at + timedelta(days=7)
    sim.at = paid_at + timedelta(days=7) - timedelta(minutes=1)
    await _run_hold_job(committed)
    assert (await _referral(committed, brand, bob))["status"] == "qualified"
    assert await balance(committed_client, brand, alice) == 0
    sim.at = paid_at + timedelta(days=7, minutes=1)
    await _run_hold_job(committed)
    referral = await _referral(committed, brand, bob)
    assert referral["status"] == "rewarded" and referral["rewarded_at"] == sim.at
    assert await balance(committed_client, brand, alice) == 200
    assert await _rewards(committed, brand) == [
        ("welcome", bob, "coupon", None, 0, 500, "granted"),
        ("invite", alice, "points", None, 200, 0, "granted"),
        ("tier", alice, "coupon", 1, 0, 1000, "granted"),
    ]
    assert await _transitions(committed, referral["id"]) == [
        (None, "pending", "attributed"),
        ("pending", "qualified", "order_paid"),
        ("qualified", "rewarded", "hold_ended"),
    ]
    succeeded = await _events_of(committed, "referral.succeeded")
    assert [(e["referral_id"], e["inviter_contact_id"]) for e in succeeded] == [
        (referral["id"], str(alice))
    ]
    assert len(await _events_of(committed, "referral.qualified")) == 1
    granted = await _events_of(committed, "referral.reward_granted")
    assert [(g["purpose"], g["kind"], g["value_fen"]) for g in granted] == [
        ("welcome", "coupon", 500),
        ("tier", "coupon", 1000),
    ]
    # referral.succeeded delivered twice more: the 200 points stay paid once.
    ids = [
        r[0]
        for r in await rows(
            committed, "SELECT id FROM outbox_events WHERE type = 'referral.succeeded'"
        )
    ]
    for _ in range(2):
        await committed.redis.enqueue_job(
            DELIVER_JOB, ids, _queue_name=committed.queue_name("points")
        )
        await work_until_idle(committed, "points")
    assert await balance(committed_client, brand, alice) == 200
    assert await rows(
        committed,
        "SELECT count(*) FROM points_ledger WHERE tenant_id = :t AND rule = 'invite'",
        t=brand.tenant_id,
    ) == [(1,)]
    view = await committed_client.get(
        f"/v1/points/referrals/inviters/{alice}", headers=brand.headers("analyst")
    )
    assert view.status_code == 200, view.text
    body = view.json()
    assert body["code"] == code and body["under_review"] is False
    assert body["counts"] == {
        "attributed": 1,
        "pending": 0,
        "qualified": 0,
        "succeeded": 1,
        "revoked": 0,
        "refused": 0,
    }
    assert [(r["invitee_id"], r["status"], r["reason"], r["level"]) for r in body["referrals"]] == [
        (str(bob), "rewarded", None, 1)
    ]
    # After the hold, a refund or the invitee leaving revokes nothing.
    await _send(
        committed,
        committed_client,
        brand,
        _event("order.refunded", "bob", sim.at, order_id="SO-1", refund_fen=12900),
    )
    assert (await _referral(committed, brand, bob))["status"] == "rewarded"
    assert await verify(committed, brand) == []


async def test_a_full_refund_within_the_hold_revokes_and_claws_back(
    committed: Runtime, committed_client: httpx.AsyncClient, sim: SimulatedClock
) -> None:
    brand = await make_brand(committed)
    alice = await make_member(committed, brand)
    code = await _code(committed_client, brand, alice)
    bob = await _register(committed, committed_client, brand, code, "bob", T0)
    carol = await _register(committed, committed_client, brand, code, "carol", T0)
    await _send(
        committed,
        committed_client,
        brand,
        _event("order.paid", "bob", T0, order_id="B-1", amount_fen=10000),
        _event("order.paid", "carol", T0, order_id="C-1", amount_fen=10000),
    )
    # Bob refunds in two parts, in full; Carol in part only.
    await _send(
        committed,
        committed_client,
        brand,
        _event("order.refunded", "bob", T0 + timedelta(days=1), order_id="B-1", refund_fen=6000),
        _event("order.refunded", "carol", T0 + timedelta(days=1), order_id="C-1", refund_fen=9000),
    )
    assert (await _referral(committed, brand, bob))["status"] == "qualified"
    await _send(
        committed,
        committed_client,
        brand,
        _event("order.refunded", "bob", T0 + timedelta(days=2), order_id="B-1", refund_fen=4000),
    )
    revoked = await _referral(committed, brand, bob)
    assert (revoked["status"], revoked["reason"]) == ("revoked", "refunded")
    assert (await _referral(committed, brand, carol))["status"] == "qualified"
    # Bob's welcome coupon is taken back as its value in points (500 fen at 50 points a
    # yuan: 250), a debt as Bob's balance (his order's points, refunded) is 0.
    assert await rows(
        committed,
        "SELECT purpose, status, clawback_points FROM referral_rewards WHERE referral_id = :r",
        r=revoked["id"],
    ) == [("welcome", "clawed_back", 250)]
    assert await rows(
        committed,
        "SELECT balance, debt FROM points_accounts WHERE tenant_id = :t AND contact_id = :c",
        t=brand.tenant_id,
        c=bob,
    ) == [(0, 250)]
    revocation = (await _events_of(committed, "referral.revoked"))[-1]
    assert (revocation["reason"], revocation["from_status"]) == ("refunded", "qualified")
    assert [c["points"] for c in revocation["clawed_back"]] == [250]
    sim.at = T0 + timedelta(days=8)
    await _run_hold_job(committed)
    assert (await _referral(committed, brand, carol))["status"] == "rewarded"
    assert (await _referral(committed, brand, bob))["status"] == "revoked"
    assert await balance(committed_client, brand, alice) == 200
    assert await verify(committed, brand) == []


async def test_an_invitee_deleting_the_staff_within_the_hold_revokes(
    committed: Runtime, committed_client: httpx.AsyncClient, sim: SimulatedClock
) -> None:
    corp = await wecom_tenant(committed)
    brand = Brand(corp.tenant_id, corp.slug, {"operator": corp.admin, "admin": corp.admin})
    alice = await make_member(committed, brand)
    code = await _code(committed_client, brand, alice)
    at = int(T0.timestamp())
    for external in ("wmBob", "wmCarol"):
        added = contact_event("add_external_contact", external=external, at=at, State=f"ref-{code}")
        assert (await post(committed_client, corp.callback(added))).status_code == 200
    await _settle(committed)
    invitees = await rows(
        committed,
        "SELECT invitee_id FROM referrals WHERE tenant_id = :t AND status = 'pending' ORDER BY id",
        t=brand.tenant_id,
    )
    bob, carol = (uuid.UUID(str(r[0])) for r in invitees)
    # Both pay; the hold ends at T0 + 1 h + 7 days.
    async with unit_of_work(committed.sessionmaker) as session:
        for contact in (bob, carol):
            await lifecycle.qualify(
                session,
                brand.tenant_id,
                [lifecycle.PaidOrder(contact, f"O-{contact}", 5000, T0 + timedelta(hours=1), "e")],
                now=T0,
            )
    # Bob deletes the staff member within the hold; Carol after it ended.
    lost = contact_event("del_follow_user", external="wmBob", at=at + 3 * 86400)
    assert (await post(committed_client, corp.callback(lost))).status_code == 200
    await _settle(committed)
    sim.at = T0 + timedelta(days=7, hours=2)
    await _run_hold_job(committed)
    lost = contact_event("del_follow_user", external="wmCarol", at=at + 8 * 86400)
    assert (await post(committed_client, corp.callback(lost))).status_code == 200
    await _settle(committed)
    bob_referral = await _referral(committed, brand, bob)
    assert (bob_referral["status"], bob_referral["reason"]) == ("revoked", "deleted_staff")
    assert (await _referral(committed, brand, carol))["status"] == "rewarded"
    assert await balance(committed_client, brand, alice) == 200
    assert await verify(committed, brand) == []


async def test_a_paid_reward_is_clawed_back_when_found_fraudulent(
    committed: Runtime, committed_client: httpx.AsyncClient, sim: SimulatedClock
) -> None:
    brand = await make_brand(committed)
    admin = await committed_client.put(
        "/v1/points/referrals/config",
        json={
            "hold_days": 0,
            "invitee_reward": None,
            "tiers": [{"count": 1, "reward": {"kind": "points", "name": "first", "points": 50}}],
        },
        headers=brand.headers("admin"),
    )
    assert admin.status_code == 200, admin.text
    alice = await make_member(committed, brand)
    code = await _code(committed_client, brand, alice)
    bob = await _register(committed, committed_client, brand, code, "bob", T0)
    await _send(
        committed,
        committed_client,
        brand,
        _event("order.paid", "bob", T0, order_id="B-1", amount_fen=100),
    )
    referral = await _referral(committed, brand, bob)
    assert referral["status"] == "rewarded"  # a hold of 0 days rewards at once
    assert await balance(committed_client, brand, alice) == 250
    # Alice spends 200 of it; then ops find the referral fraudulent.
    spent = await committed_client.post(
        f"/v1/points/accounts/{alice}/adjustments",
        json={"points": -200, "reason": "spent"},
        headers=brand.headers(),
    )
    assert spent.status_code in (200, 201), spent.text
    url = f"/v1/points/referrals/{referral['id']}/revoke"
    assert (await committed_client.post(url, json={}, headers=brand.headers())).status_code == 422
    answer = await committed_client.post(url, json={"reason": "farm"}, headers=brand.headers())
    assert answer.status_code == 200 and answer.json() == {
        "referral_id": referral["id"],
        "revoked": True,
    }
    again = await committed_client.post(url, json={"reason": "farm"}, headers=brand.headers())
    assert again.json()["revoked"] is False
    # 200 + 50 taken back: 50 from the balance, 200 as a debt.
    assert await rows(
        committed,
        "SELECT balance, debt FROM points_accounts WHERE tenant_id = :t AND contact_id = :c",
        t=brand.tenant_id,
        c=alice,
    ) == [(0, 200)]
    assert [r[-1] for r in await _rewards(committed, brand)] == ["clawed_back", "clawed_back"]
    assert (await _referral(committed, brand, bob))["reason"] == "fraud"
    audit = await rows(
        committed,
        "SELECT action FROM audit_log WHERE tenant_id = :t AND action LIKE '%revoke%'",
        t=brand.tenant_id,
    )
    assert len(audit) == 2
    assert await verify(committed, brand) == []
    # The verification sees a revoked referral's reward left paid, or a clawback
    # that took other than its reward's value.
    async with committed.engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE referral_rewards SET status = 'granted' WHERE purpose = 'invite' "
                "AND tenant_id = :t"
            ),
            {"t": brand.tenant_id},
        )
        await conn.execute(
            text(
                "UPDATE referral_rewards SET clawback_points = 51 WHERE purpose = 'tier' "
                "AND tenant_id = :t"
            ),
            {"t": brand.tenant_id},
        )
    assert [v.split(":")[0] for v in await verify(committed, brand)] == [
        "referral_clawback_vs_entry",
        "revoked_referral_rewards",
    ]


async def test_anti_fraud_dedupe_daily_cap_and_review(
    committed: Runtime, committed_client: httpx.AsyncClient, sim: SimulatedClock
) -> None:
    brand = await make_brand(committed)
    put = await committed_client.put(
        "/v1/points/referrals/config",
        json={"hold_days": 1, "daily_cap": 3, "velocity_per_minute": 50, "invitee_reward": None},
        headers=brand.headers("admin"),
    )
    assert put.status_code == 200
    alice = await make_member(committed, brand)
    code = await _code(committed_client, brand, alice)
    same_device = [
        _event("referral.registered", f"d{i}", T0, code=code, device_id="dev-1", ip=f"10.0.0.{i}")
        for i in range(2)
    ]
    same_ip = [
        _event("referral.registered", f"i{i}", T0, code=code, device_id=f"x{i}", ip="10.9.9.9")
        for i in range(2)
    ]
    others = [_event("referral.registered", f"o{i}", T0, code=code) for i in range(3)]
    for event in (*same_device, *same_ip, *others):  # one at a time: in this order
        await _send(committed, committed_client, brand, event)
    found = await rows(
        committed,
        "SELECT status, reason FROM referrals WHERE tenant_id = :t ORDER BY id",
        t=brand.tenant_id,
    )
    assert found == [
        ("pending", None),
        ("refused", "duplicate_device"),
        ("pending", None),
        ("refused", "duplicate_ip"),
        ("pending", None),
        ("refused", "daily_cap"),
        ("refused", "daily_cap"),
    ]
    # The next tenant-local day counts afresh.
    tomorrow = _event("referral.registered", "n1", T0 + timedelta(days=1), code=code)
    await _send(committed, committed_client, brand, tomorrow)
    assert (await rows(committed, "SELECT status FROM referrals ORDER BY id DESC LIMIT 1")) == [
        ("pending",)
    ]


async def test_fifty_invites_in_a_minute_put_the_inviter_under_review(
    committed: Runtime, committed_client: httpx.AsyncClient, sim: SimulatedClock
) -> None:
    brand = await make_brand(committed)
    await committed_client.put(
        "/v1/points/referrals/config",
        json={"hold_days": 1, "invitee_reward": None, "tiers": []},
        headers=brand.headers("admin"),
    )
    fast, slow = await make_member(committed, brand), await make_member(committed, brand)
    fast_code, slow_code = (
        await _code(committed_client, brand, fast),
        await _code(committed_client, brand, slow),
    )
    burst = [
        _event("referral.registered", f"f{i}", T0 + timedelta(seconds=i), code=fast_code)
        for i in range(50)
    ]
    # 49 within a minute, then one a minute later: no review.
    paced = [
        _event("referral.registered", f"s{i}", T0 + timedelta(seconds=i), code=slow_code)
        for i in range(49)
    ] + [_event("referral.registered", "s49", T0 + timedelta(seconds=70), code=slow_code)]
    await _send(committed, committed_client, brand, *burst, *paced)
    reviews = await committed_client.get(
        "/v1/points/referrals/reviews?status=open", headers=brand.headers()
    )
    assert reviews.status_code == 200
    items = reviews.json()["items"]
    assert [(i["inviter_id"], i["trigger"]) for i in items] == [(str(fast), "velocity")]
    assert items[0]["details"]["invites_in_minute"] == 50
    view = await committed_client.get(
        f"/v1/points/referrals/inviters/{fast}", headers=brand.headers()
    )
    assert view.json()["under_review"] is True
    # Both inviters' invitees pay: the hold ends, but the reviewed inviter's rewards wait.
    invitees = await rows(
        committed,
        "SELECT invitee_id FROM referrals WHERE tenant_id = :t AND status = 'pending'",
        t=brand.tenant_id,
    )
    async with unit_of_work(committed.sessionmaker) as session:
        await lifecycle.qualify(
            session,
            brand.tenant_id,
            [lifecycle.PaidOrder(r[0], f"O-{r[0]}", 100, T0, "e") for r in invitees],
            now=T0,
        )
    sim.at = T0 + timedelta(days=2)
    await _run_hold_job(committed)
    assert await balance(committed_client, brand, slow) == 50 * 200
    assert await balance(committed_client, brand, fast) == 0
    # Reject half the story: approve, and the rewards proceed.
    review_id = items[0]["id"]
    approve = await committed_client.post(
        f"/v1/points/referrals/reviews/{review_id}/approve",
        json={"reason": "a real community leader"},
        headers=brand.headers(),
    )
    assert approve.status_code == 200, approve.text
    assert (approve.json()["status"], approve.json()["revoked"]) == ("approved", 0)
    twice = await committed_client.post(
        f"/v1/points/referrals/reviews/{review_id}/reject",
        json={"reason": "x"},
        headers=brand.headers(),
    )
    assert twice.status_code == 409 and twice.json()["error"]["code"] == "review_decided"
    await _run_hold_job(committed)
    assert await balance(committed_client, brand, fast) == 50 * 200
    # A new burst opens a new review, and a rejection revokes what is still open.
    second = [
        _event("referral.registered", f"g{i}", sim.at + timedelta(seconds=1 + i), code=fast_code)
        for i in range(50)
    ]
    await _send(committed, committed_client, brand, *second)
    open_reviews = (
        await committed_client.get(
            "/v1/points/referrals/reviews?status=open", headers=brand.headers()
        )
    ).json()["items"]
    assert len(open_reviews) == 1 and open_reviews[0]["id"] != review_id
    reject = await committed_client.post(
        f"/v1/points/referrals/reviews/{open_reviews[0]['id']}/reject",
        json={"reason": "device farm"},
        headers=brand.headers(),
    )
    assert reject.status_code == 200 and reject.json()["revoked"] == 50
    assert await rows(
        committed,
        "SELECT status, reason, count(*) FROM referrals WHERE tenant_id = :t AND inviter_id = :i "
        "GROUP BY 1, 2 ORDER BY 1",
        t=brand.tenant_id,
        i=fast,
    ) == [("revoked", "fraud", 50), ("rewarded", None, 50)]
    decided = await rows(
        committed,
        "SELECT action FROM audit_log WHERE tenant_id = :t AND action LIKE '%reviews%' ORDER BY id",
        t=brand.tenant_id,
    )
    assert len(decided) == 2  # the 409 changed nothing and is not a decision
    assert await verify(committed, brand) == []


async def test_tiers_are_paid_once_each_under_twenty_concurrent_orders(
    committed: Runtime, committed_client: httpx.AsyncClient, sim: SimulatedClock
) -> None:
    brand = await make_brand(committed)
    await committed_client.put(
        "/v1/points/referrals/config",
        json={
            "hold_days": 0,
            "invitee_reward": None,
            "tiers": [
                {"count": 1, "reward": {"kind": "points", "name": "t1", "points": 1}},
                {"count": 5, "reward": {"kind": "points", "name": "t5", "points": 10}},
                {"count": 10, "reward": {"kind": "coupon", "name": "t10", "value_fen": 100}},
                {"count": 21, "reward": {"kind": "points", "name": "t21", "points": 1000}},
            ],
        },
        headers=brand.headers("admin"),
    )
    alice = await make_member(committed, brand)
    code = await _code(committed_client, brand, alice)
    await _send(
        committed,
        committed_client,
        brand,
        *[_event("referral.registered", f"c{i}", T0, code=code) for i in range(20)],
    )
    invitees = [
        uuid.UUID(str(r[0]))
        for r in await rows(
            committed, "SELECT invitee_id FROM referrals WHERE tenant_id = :t", t=brand.tenant_id
        )
    ]
    assert len(invitees) == 20

    async def pay(contact: uuid.UUID) -> None:
        async with unit_of_work(committed.sessionmaker) as session:
            await lifecycle.qualify(
                session,
                brand.tenant_id,
                [lifecycle.PaidOrder(contact, f"O-{contact}", 100, T0, "e")],
                now=T0,
            )

    await asyncio.gather(*(pay(c) for c in invitees))
    assert await rows(
        committed,
        "SELECT tier_count, count(*) FROM referral_rewards WHERE tenant_id = :t "
        "AND purpose = 'tier' GROUP BY 1 ORDER BY 1",
        t=brand.tenant_id,
    ) == [(1, 1), (5, 1), (10, 1)]
    await _settle(committed)
    assert await balance(committed_client, brand, alice) == 20 * 200 + 1 + 10
    assert await verify(committed, brand) == []


async def test_a_backlog_drains_a_batch_a_run_and_tiers_are_paid_as_crossed(
    committed: Runtime,
    committed_client: httpx.AsyncClient,
    sim: SimulatedClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """More due referrals than a batch: a run rewards a batch, then runs a partition of
    the inviters follow at once, each followed by the next while its batches come
    full; tiers crossed in any batch are paid once each."""
    monkeypatch.setattr(lifecycle, "BATCH", 2)
    brand = await make_brand(committed)
    await committed_client.put(
        "/v1/points/referrals/config",
        json={
            "invitee_reward": None,
            "tiers": [
                {"count": c, "reward": {"kind": "points", "name": f"t{c}", "points": c}}
                for c in (1, 2, 3, 5)
            ],
        },
        headers=brand.headers("admin"),
    )
    alice = await make_member(committed, brand)
    code = await _code(committed_client, brand, alice)
    await _invited_and_paid(committed, committed_client, brand, code, "d", 5)
    sim.at = T0 + timedelta(days=8)
    async with unit_of_work(committed.sessionmaker) as session:
        await schedule(session, service="points", job="reward_referrals", due_at=datetime.now(UTC))
    await schedule_and_work(committed, "points")  # one run: 2 rewarded, a follow-up scheduled
    by_status = (
        "SELECT status, count(*) FROM referrals WHERE tenant_id = :t GROUP BY status "
        "ORDER BY status"
    )
    assert await rows(committed, by_status, t=brand.tenant_id) == [
        ("qualified", 3),
        ("rewarded", 2),
    ]
    # The backlog is worked by a run a partition of the inviters, at once.
    follow_ups = await rows(
        committed,
        "SELECT args FROM scheduled_jobs WHERE dedupe_key LIKE 'reward_referrals:after:%' "
        "ORDER BY id",
    )
    assert [r[0] for r in follow_ups] == [
        {"part": p, "parts": tasks.REWARD_PARTS} for p in range(tasks.REWARD_PARTS)
    ]
    for _ in range(3):
        await schedule_and_work(committed, "points")
    await _settle(committed)
    assert await rows(committed, by_status, t=brand.tenant_id) == [("rewarded", 5)]
    # Batches of 2, 2 and 1 crossed tiers 1-2, 3 and 5: each paid once.
    assert await rows(
        committed,
        "SELECT tier_count, status FROM referral_rewards WHERE tenant_id = :t "
        "AND purpose = 'tier' ORDER BY tier_count",
        t=brand.tenant_id,
    ) == [(1, "granted"), (2, "granted"), (3, "granted"), (5, "granted")]
    assert await balance(committed_client, brand, alice) == 5 * 200 + 1 + 2 + 3 + 5
    assert await verify(committed, brand) == []


async def test_refusals_through_the_api(
    committed: Runtime, committed_client: httpx.AsyncClient, sim: SimulatedClock
) -> None:
    brand = await make_brand(committed)
    alice, bob, carol = [await make_member(committed, brand) for _ in range(3)]
    alice_code = await _code(committed_client, brand, alice)
    bob_code = await _code(committed_client, brand, bob)

    async def attribute(invitee: uuid.UUID, code: str) -> dict[str, Any]:
        answer = await committed_client.post(
            "/v1/points/referrals/attributions",
            json={"invitee_id": str(invitee), "code": code},
            headers=brand.headers(),
        )
        assert answer.status_code == 201, answer.text
        return dict(answer.json())

    # Contacts made before the code was shared are known to each other: make fresh ones.
    dave = await make_member(committed, brand)
    assert (await attribute(dave, alice_code))["status"] == "pending"
    assert (await attribute(alice, alice_code))["reason"] == "self_invite"
    dave_code = await _code(committed_client, brand, dave)
    erin = await make_member(committed, brand)
    assert (await attribute(erin, dave_code))["status"] == "pending"
    assert (await attribute(alice, await _code(committed_client, brand, erin)))["reason"] == "cycle"
    assert (await attribute(carol, bob_code))["reason"] == "already_known"
    assert (await attribute(dave, bob_code))["reason"] == "already_attributed"
    assert (await attribute(carol, "NOSUCHCODE"))["reason"] == "unknown_code"
    staff = await committed_client.post(
        "/v1/points/referrals/attributions",
        json={"invitee_id": str(dave), "code": alice_code},
        headers=brand.headers("staff"),
    )
    assert staff.status_code == 403
    bad = await committed_client.post(
        "/v1/points/referrals/attributions",
        json={"invitee_id": "nope", "code": alice_code},
        headers=brand.headers(),
    )
    assert bad.status_code == 422
    view = (
        await committed_client.get(
            f"/v1/points/referrals/inviters/{alice}", headers=brand.headers()
        )
    ).json()
    assert sorted((r["level"], r["status"], r["reason"]) for r in view["referrals"]) == [
        (1, "pending", None),
        (1, "refused", "self_invite"),
        (2, "pending", None),
    ]
    assert view["counts"]["refused"] == 1 and view["counts"]["attributed"] == 1


async def test_merges_follow_the_survivor_once(
    committed: Runtime, committed_client: httpx.AsyncClient, sim: SimulatedClock
) -> None:
    brand = await make_brand(committed)
    await committed_client.put(
        "/v1/points/referrals/config",
        json={
            "hold_days": 0,
            "invitee_reward": None,
            "tiers": [{"count": 1, "reward": {"kind": "points", "name": "t1", "points": 7}}],
        },
        headers=brand.headers("admin"),
    )
    alice, alice2 = await make_member(committed, brand), await make_member(committed, brand)
    a1, a2 = (
        await _code(committed_client, brand, alice),
        await _code(committed_client, brand, alice2),
    )
    bob = await _register(committed, committed_client, brand, a1, "bob", T0)
    bob2 = await _register(committed, committed_client, brand, a2, "bob2", T0)
    await _send(
        committed,
        committed_client,
        brand,
        _event("order.paid", "bob", T0, order_id="B-1", amount_fen=100),
        _event("order.paid", "bob2", T0, order_id="B-2", amount_fen=100),
    )
    # Both inviters reached tier 1; then alice2 turns out to be alice, and bob2 bob:
    # the points follow the survivor (the ledger's merge) and so do the referrals.
    merges = [
        (
            "contact.merged",
            {"survivor_id": str(s), "merged_id": str(m), "reason": "phone"},
            brand.tenant_id,
        )
        for s, m in ((alice, alice2), (bob, bob2))
    ]
    async with unit_of_work(committed.sessionmaker) as session:
        await publish_many(session, merges)
    await _settle(committed)
    ids = [
        r[0]
        for r in await rows(committed, "SELECT id FROM outbox_events WHERE type = 'contact.merged'")
    ]
    await committed.redis.enqueue_job(DELIVER_JOB, ids, _queue_name=committed.queue_name("points"))
    await work_until_idle(committed, "points")  # delivered again: nothing more
    found = await rows(
        committed,
        "SELECT inviter_id, invitee_id, status, reason FROM referrals WHERE tenant_id = :t "
        "ORDER BY id",
        t=brand.tenant_id,
    )
    assert found == [(alice, bob, "rewarded", None), (alice, bob2, "revoked", "merged")]
    assert await rows(
        committed,
        "SELECT purpose, contact_id, status FROM referral_rewards WHERE tenant_id = :t "
        "ORDER BY purpose, status",
        t=brand.tenant_id,
    ) == [
        ("invite", alice, "clawed_back"),
        ("invite", alice, "granted"),
        ("tier", alice, "clawed_back"),
        ("tier", alice, "granted"),
    ]
    # Alice keeps one invite's points and one tier: 200 + 7.
    assert await balance(committed_client, brand, alice) == 207
    assert await verify(committed, brand) == []


@pytest.mark.slow
async def test_a_worker_killed_during_the_hold_job_rewards_once(
    committed: Runtime,
    committed_client: httpx.AsyncClient,
    scrm_env: dict[str, str],
) -> None:
    """The job writes one tenant's rewards, is SIGKILLed waiting for the next one's
    inviter: nothing of the run stays, and the next run rewards each referral once."""
    brands = [await make_brand(committed) for _ in range(2)]
    inviters: list[uuid.UUID] = []
    for brand in brands:
        inviter = await make_member(committed, brand)
        inviters.append(inviter)
        code = await _code(committed_client, brand, inviter)
        await _invited_and_paid(committed, committed_client, brand, code, "k", 5)
    async with committed.engine.begin() as conn:
        await conn.execute(text("UPDATE referrals SET hold_until = now() - interval '1 minute'"))
        # The job's runs come only from this test's schedule.
        await conn.execute(text("UPDATE scheduled_jobs SET status = 'cancelled'"))
    # The second tenant's inviter is held: the worker's job waits there, the first
    # tenant's rewards written in its transaction.
    # (The job takes the tenants in the order of their referrals: the first brand's first.)
    first, second = zip(brands, inviters, strict=True)
    holder = await committed.engine.connect()
    await holder.execute(  # held until the holder's transaction ends
        text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
        {"k": f"referral:{second[0].tenant_id}:{second[1]}"},
    )
    async with unit_of_work(committed.sessionmaker) as session:
        await schedule(session, service="points", job="reward_referrals", due_at=datetime.now(UTC))
    worker = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "worker", "--service", "points"],
        env=scrm_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        await Scheduler(committed).enqueue_due()

        async def waiting() -> bool:
            found = await rows(
                committed,
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
            )
            return bool(found[0][0])

        await wait_until(waiting, "the job waiting for the second tenant's inviter")
        written = await rows(
            committed,
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
            "WHERE c.relname = 'referrals' AND l.mode = 'RowExclusiveLock'",
        )
        assert written[0][0] >= 1, "the first tenant's rewards are being written"
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
        await holder.close()
    assert await rows(committed, "SELECT count(*) FROM referrals WHERE status = 'rewarded'") == [
        (0,)
    ]
    assert await rows(committed, "SELECT count(*) FROM points_ledger WHERE rule = 'invite'") == [
        (0,)
    ]
    # The next run (twice, as two schedulers might) rewards each once.
    for _ in range(2):
        async with unit_of_work(committed.sessionmaker) as session:
            await lifecycle.reward_due(session, now=datetime.now(UTC))
    for brand, inviter in (first, second):
        assert await balance(committed_client, brand, inviter) == 5 * 200
        assert await rows(
            committed,
            "SELECT purpose, tier_count, count(*) FROM referral_rewards WHERE tenant_id = :t "
            "AND contact_id = :c GROUP BY 1, 2 ORDER BY 1, 2",
            t=brand.tenant_id,
            c=inviter,
        ) == [("invite", None, 5), ("tier", 1, 1), ("tier", 5, 1)]
        assert await verify(committed, brand) == []
