"""The referral report over HTTP, on real PostgreSQL and the real bus: each figure
against numbers worked out by hand (tenant-local days at the window's edges), its read
model fed by the users service's events (through the users service itself, and as it
publishes them), following merges; the D1 retention alert recorded once and posted to
a local webhook; 422 on bad windows; one tenant never sees another's figures."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlalchemy import insert, text

from services.points import clock
from services.points.referrals import reports_tasks  # noqa: F401  (registers the handlers)
from services.points.referrals.models import Referral, ReferralReward
from services.points.referrals.report_api import router as report_router
from shared.app import create_app
from shared.db import unit_of_work
from shared.events import SERVICES, publish_many
from shared.relay import DELIVER_JOB
from shared.runtime import Runtime
from shared.scheduler import schedule
from tests.points.support import AlertReceiver, Brand, make_brand, make_member, rows
from tests.shared.bus_support import relay_all, schedule_and_work, work_until_idle
from tests.users.support import process_all

SHANGHAI = ZoneInfo("Asia/Shanghai")
REPORT = "/v1/points/referrals/report"
NOVEMBER = {"from": "2026-11-01", "to": "2026-11-30"}


def local(month: int, day: int, hour: int = 12, minute: int = 0) -> datetime:
    """A moment of 2026 in the tenants' time zone (Asia/Shanghai, UTC+8)."""
    return datetime(2026, month, day, hour, minute, tzinfo=SHANGHAI)


class SimulatedClock:
    def __init__(self, at: datetime) -> None:
        self.at = at


@pytest.fixture
def sim() -> Iterator[SimulatedClock]:
    now = SimulatedClock(local(12, 2, 10))
    with clock.use(lambda: now.at):
        yield now


@pytest.fixture
async def api(committed: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    """The app, with the report's router until services.points.api includes it."""
    app = create_app(SERVICES, committed)
    if not any(getattr(route, "path", None) == REPORT for route in app.routes):
        app.include_router(report_router, prefix="/v1")
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


async def report(
    api: httpx.AsyncClient, brand: Brand, role: str = "analyst", **window: str
) -> dict[str, Any]:
    answer = await api.get(REPORT, params=window or NOVEMBER, headers=brand.headers(role))
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()
    return found


async def settle(runtime: Runtime) -> None:
    for _ in range(2):
        await relay_all(runtime)
        await work_until_idle(runtime, "points")


async def publish(runtime: Runtime, brand: Brand, *events: tuple[str, dict[str, Any]]) -> None:
    """Events as the users service publishes them, then the points worker."""
    async with unit_of_work(runtime.sessionmaker) as session:
        await publish_many(session, [(kind, payload, brand.tenant_id) for kind, payload in events])
    await settle(runtime)


def joined(contact: uuid.UUID, at: datetime) -> tuple[str, dict[str, Any]]:
    return (
        "contact.profile_changed",
        {
            "contact_id": str(contact),
            "created_at": at.isoformat(),
            "owner_staff": None,
            "channel": None,
            "attributes": {},
        },
    )


def did(
    kind: str, contact: uuid.UUID, at: datetime, **properties: Any
) -> tuple[str, dict[str, Any]]:
    return (
        kind,
        {
            "contact_id": str(contact),
            "event_id": uuid.uuid4().hex,
            "occurred_at": at.isoformat(),
            "properties": properties,
            "source": "event",
        },
    )


def paid(contact: uuid.UUID, at: datetime) -> tuple[str, dict[str, Any]]:
    return did("order.paid", contact, at, order_id=f"SO-{uuid.uuid4().hex[:8]}", amount_fen=9900)


async def members(runtime: Runtime, brand: Brand, count: int) -> list[uuid.UUID]:
    return [await make_member(runtime, brand) for _ in range(count)]


async def add_referrals(runtime: Runtime, brand: Brand, *referrals: dict[str, Any]) -> list[int]:
    """Referrals as the referrals part leaves them (status, reason and times given)."""
    values = [
        {
            "tenant_id": brand.tenant_id,
            "code": "TESTCODE00",
            "source": "api",
            "event_key": f"api:{uuid.uuid4()}",
            "level2_inviter_id": None,
            "reason": None,
            "qualified_at": None,
            "rewarded_at": None,
            "revoked_at": None,
            **r,
        }
        for r in referrals
    ]
    async with unit_of_work(runtime.sessionmaker) as session:
        found = await session.scalars(insert(Referral).values(values).returning(Referral.id))
        return list(found)


async def add_rewards(runtime: Runtime, brand: Brand, *rewards: dict[str, Any]) -> None:
    values = [
        {
            "tenant_id": brand.tenant_id,
            "reward_key": f"test:{uuid.uuid4()}",
            "name": "test reward",
            "status": "granted",
            "created_at": r.get("granted_at") or local(11, 1),
            "referral_id": None,
            "tier_count": None,
            "points": 0,
            "value_fen": 0,
            "sku": None,
            "clawback_points": None,
            "clawed_back_at": None,
            **r,
        }
        for r in rewards
    ]
    async with unit_of_work(runtime.sessionmaker) as session:
        await session.execute(insert(ReferralReward).values(values))


async def configure(api: httpx.AsyncClient, brand: Brand, **rules: Any) -> None:
    answer = await api.put("/v1/points/config", json=rules, headers=brand.headers("admin"))
    assert answer.status_code == 200, answer.text


def reward(
    purpose: str, contact: uuid.UUID, granted: datetime | None, **more: Any
) -> dict[str, Any]:
    """A reward as the referrals part records it: its kind by what it gives."""
    kind = "points" if "points" in more else "coupon" if "value_fen" in more else "item"
    return {"purpose": purpose, "contact_id": contact, "kind": kind, "granted_at": granted, **more}


def cohort(day: str, invitees: int, retained: int, share: float) -> dict[str, Any]:
    return {
        "day": day,
        "invitees": invitees,
        "retained": retained,
        "d1_retention": share,
        "complete": True,
    }


def referral(
    invitee: uuid.UUID, inviter: uuid.UUID | None, at: datetime, status: str
) -> dict[str, Any]:
    return {"invitee_id": invitee, "inviter_id": inviter, "attributed_at": at, "status": status}


async def test_every_figure_of_a_month_worked_out_by_hand(
    committed: Runtime, api: httpx.AsyncClient, sim: SimulatedClock
) -> None:
    brand = await make_brand(committed)
    other = await make_brand(committed)
    await configure(api, brand, points_per_yuan_off=30)  # a point is worth 10/3 fen
    a, b, c = await members(committed, brand, 3)
    i1, i2, i3, i4, i5, i6, i7, i8, i9, i11 = await members(committed, brand, 10)
    early, late, o1, o2, o3 = await members(committed, brand, 5)
    stranger, their_inviter = await members(committed, other, 2)
    ids = await add_referrals(
        committed,
        brand,
        referral(b, a, local(10, 20), "rewarded"),  # before the window: b is an invitee
        {
            **referral(i1, a, local(11, 10, 10), "rewarded"),
            "qualified_at": local(11, 10, 12),
            "rewarded_at": local(11, 17),
        },
        {
            **referral(i2, a, local(11, 10, 11), "rewarded"),
            "qualified_at": local(11, 10, 13),
            "rewarded_at": local(11, 17),
        },
        {
            **referral(i3, b, local(11, 10, 12), "qualified"),
            "level2_inviter_id": a,
            "qualified_at": local(11, 11),
        },
        {**referral(i4, b, local(11, 10, 13), "pending"), "level2_inviter_id": a},
        {
            **referral(i5, a, local(11, 10, 14), "revoked"),
            "reason": "refunded",
            "qualified_at": local(11, 10, 15),
            "revoked_at": local(11, 12),
        },
        {
            **referral(i6, c, local(11, 12, 9), "revoked"),
            "reason": "deleted_staff",
            "revoked_at": local(11, 12, 20),
        },
        {**referral(i7, a, local(11, 12, 11), "refused"), "reason": "daily_cap"},
        {**referral(i8, None, local(11, 13), "refused"), "reason": "unknown_code"},
        # The same person as another invitee: revoked as merged, not a new person.
        {**referral(i9, a, local(11, 12, 10), "revoked"), "reason": "merged"},
        referral(i11, c, local(11, 30, 23, 50), "pending"),  # the window's last minutes
        # Just outside the window in Shanghai, though inside November in UTC.
        referral(early, a, local(10, 31, 23, 55), "rewarded"),
        referral(late, a, local(12, 1, 0, 10), "rewarded"),
    )
    r1, r2, r5 = ids[1], ids[2], ids[5]
    await add_referrals(
        committed, other, referral(stranger, their_inviter, local(11, 10), "rewarded")
    )
    async with unit_of_work(committed.sessionmaker) as session:
        await session.execute(
            text(
                "INSERT INTO points_items (id, tenant_id, sku, kind, name, points_cost) "
                "VALUES (:id, :t, 'referral-gift', 'coupon', 'Gift', 1500)"
            ),
            {"id": uuid.uuid4(), "t": brand.tenant_id},
        )
    await add_rewards(
        committed,
        brand,
        # Granted in the window: 400 points (1333 fen), 3 coupons (1500 fen), an item
        # of 1500 points (5000 fen); one coupon clawed back since (500 fen).
        reward("invite", a, local(11, 17), points=200, referral_id=r1),
        reward("invite", a, local(11, 17), points=200, referral_id=r2),
        reward("welcome", i1, local(11, 10, 10), value_fen=500, referral_id=r1),
        reward("welcome", i2, local(11, 10, 11), value_fen=500, referral_id=r2),
        reward(
            "welcome",
            i5,
            local(11, 10, 14),
            value_fen=500,
            referral_id=r5,
            status="clawed_back",
            clawback_points=150,
            clawed_back_at=local(11, 12),
        ),
        reward("tier", a, local(11, 18), sku="referral-gift", tier_count=1),
        # Not granted in the window: before it, after it, and still owed.
        reward("invite", a, local(10, 31, 23), points=200),
        reward("invite", a, local(12, 1, 0, 30), points=200),
        reward("tier", a, None, sku="referral-gift", tier_count=5, status="owed"),
    )
    await add_rewards(committed, other, reward("invite", their_inviter, local(11, 17), points=999))
    await publish(
        committed,
        brand,
        # Contacts joining: 10 in November (i9 merged away, so never published).
        joined(a, local(9, 1)),
        joined(b, local(10, 20)),
        joined(c, local(10, 1)),
        *(joined(i, local(11, 10, 9)) for i in (i1, i2, i3, i4, i5)),
        joined(i6, local(11, 12, 8)),
        joined(i7, local(11, 12, 11)),
        joined(i11, local(11, 30, 23, 50)),
        joined(o1, local(11, 3)),
        joined(o2, local(11, 15)),
        joined(o3, local(12, 1, 0, 10)),  # November in UTC, December in Shanghai
        joined(early, local(10, 31, 23, 55)),
    )
    await publish(committed, other, joined(stranger, local(11, 10)))
    await publish(
        committed,
        brand,
        # Paid orders: i1 and i5 on their first day, i2 the next day (active on D1), o1.
        paid(i1, local(11, 10, 12)),
        paid(i5, local(11, 10, 15)),
        paid(i2, local(11, 11, 20)),
        paid(o1, local(11, 20)),
        paid(o3, local(12, 1, 9)),
        # D1 activity: i1 (page view), i6 at 00:30 the local next day (the same day in
        # UTC), i11 the day after the window; i3 two days later and i4 the same day do
        # not count; i9's does not either (its referral is not a new person).
        did("page.view", i1, local(11, 11, 9), url="https://shop.example.com/p/1"),
        did("share", i6, local(11, 13, 0, 30)),
        did("live.watch", i11, local(12, 1, 23, 30)),
        did("checkin", i3, local(11, 12, 8)),
        did("page.view", i4, local(11, 10, 18)),
        did("page.view", i9, local(11, 13, 10)),
    )
    await publish(committed, other, did("page.view", stranger, local(11, 11)))

    found = await report(api, brand)
    assert found["window"] == {
        "from": "2026-11-01",
        "to": "2026-11-30",
        "days": 30,
        "timezone": "Asia/Shanghai",
        "starts_at": "2026-11-01T00:00:00+08:00",
        "ends_at": "2026-12-01T00:00:00+08:00",
    }
    assert found["funnel"] == {
        "invites": 10,
        "attributed": 8,
        "qualified": 4,
        "succeeded": 2,
        "revoked": 3,
        "revoked_by_reason": {"deleted_staff": 1, "merged": 1, "refunded": 1},
        "refused": 2,
        "refused_by_reason": {"daily_cap": 1, "unknown_code": 1},
    }
    # Joined in November: i1-i6, i7, i11, o1, o2; invitees i1-i6 and i11, through an
    # invitee (b) i3 and i4.
    assert found["new_contacts"] == {
        "joined": 10,
        "level1": 7,
        "level1_share": 0.7,
        "level2": 2,
        "level2_share": 0.2,
    }
    assert found["paid_conversion"] == {
        "invited": {"contacts": 7, "paid": 3, "share": 0.4286},
        "organic": {"contacts": 3, "paid": 1, "share": 0.3333},
    }
    b_and_c = sorted([b, c])
    assert found["top_inviters"] == [
        {"contact_id": str(a), "attributed": 4, "succeeded": 2},
        {"contact_id": str(b_and_c[0]), "attributed": 2, "succeeded": 0},
        {"contact_id": str(b_and_c[1]), "attributed": 2, "succeeded": 0},
    ]
    assert found["k_factor"] == {
        "inviters": 3,
        "attributed": 8,
        "succeeded": 2,
        "invites_per_inviter": 2.6667,
        "conversion": 0.25,
        "k_factor": 0.6667,
    }
    assert found["d1_retention"] == {
        "invitees": 7,
        "retained": 4,
        "d1_retention": 0.5714,
        "measured_through": "2026-11-30",
        "alert_below": 0.3,
        "cohorts": [
            cohort("2026-11-10", 5, 2, 0.4),
            cohort("2026-11-12", 1, 1, 1.0),
            cohort("2026-11-30", 1, 1, 1.0),
        ],
    }
    assert found["reward_cost"] == {
        "points_per_yuan_off": 30,
        "granted": {
            "rewards": 6,
            "points": 400,
            "points_fen": 1333,
            "coupons_fen": 1500,
            "items_fen": 5000,
            "total_fen": 7833,
        },
        "clawed_back": {
            "rewards": 1,
            "points": 0,
            "points_fen": 0,
            "coupons_fen": 500,
            "items_fen": 0,
            "total_fen": 500,
        },
        "net_fen": 7333,
        "acquired": 2,
        "per_acquired_fen": 3667,  # 3666.5, rounded half up
    }
    assert found["alerts"] == []
    # The same report for the other tenant: its own figures only.
    theirs = await report(api, other, role="admin")
    assert theirs["funnel"]["invites"] == 1 and theirs["funnel"]["succeeded"] == 1
    assert theirs["new_contacts"] == {
        "joined": 1,
        "level1": 1,
        "level1_share": 1.0,
        "level2": 0,
        "level2_share": 0.0,
    }
    assert theirs["d1_retention"]["retained"] == 1
    assert theirs["reward_cost"]["granted"]["points"] == 999
    assert theirs["top_inviters"] == [
        {"contact_id": str(their_inviter), "attributed": 1, "succeeded": 1}
    ]
    # The read model holds only what retention needs: one day of each active invitee.
    assert sorted(
        await rows(
            committed,
            "SELECT contact_id, day FROM referral_activity WHERE tenant_id = :t",
            t=brand.tenant_id,
        )
    ) == sorted(
        [
            (i1, date(2026, 11, 11)),
            (i2, date(2026, 11, 11)),
            (i6, date(2026, 11, 13)),
            (i9, date(2026, 11, 13)),
            (i11, date(2026, 12, 1)),
        ]
    )


async def test_the_read_model_follows_the_users_service(
    committed: Runtime, api: httpx.AsyncClient, sim: SimulatedClock
) -> None:
    """Contacts made by the users service itself: bob comes through alice's share link,
    comes back the next day and pays; carol comes on her own."""
    brand = await make_brand(committed)
    alice = await make_member(committed, brand)
    code = (await api.get(f"/v1/points/referrals/codes/{alice}", headers=brand.headers())).json()[
        "code"
    ]
    start = datetime.now(UTC)
    sim.at = start
    day = start.astimezone(SHANGHAI).date()

    def event(kind: str, customer: str, at: datetime, **properties: Any) -> dict[str, Any]:
        return {
            "event_id": uuid.uuid4().hex,
            "type": kind,
            "occurred_at": at.isoformat(),
            "contact": {"shop_customer_id": customer},
            "properties": properties,
        }

    for sent in (
        [event("referral.registered", "bob", start, code=code), event("checkin", "carol", start)],
        [
            event("page.view", "bob", start + timedelta(days=1), url="https://x.example/p/1"),
            event("order.paid", "bob", start + timedelta(days=1), order_id="SO-1", amount_fen=100),
        ],
    ):
        answer = await api.post("/v1/events", json={"events": sent}, headers=brand.headers())
        assert answer.status_code == 202 and not answer.json()["rejected"], answer.text
        await process_all(committed)
        await settle(committed)
    sim.at = start + timedelta(days=3)
    # A day either side: the contacts are made (now) a moment after `start`.
    window = {"from": str(day - timedelta(days=1)), "to": str(day + timedelta(days=1))}
    found = await report(api, brand, role="operator", **window)
    assert (found["funnel"]["invites"], found["funnel"]["qualified"]) == (1, 1)
    assert found["new_contacts"]["joined"] == 2
    assert found["new_contacts"]["level1_share"] == 0.5
    assert found["paid_conversion"] == {
        "invited": {"contacts": 1, "paid": 1, "share": 1.0},
        "organic": {"contacts": 1, "paid": 0, "share": 0.0},
    }
    assert (found["d1_retention"]["invitees"], found["d1_retention"]["retained"]) == (1, 1)
    # The welcome coupon (¥5) is the programme's only cost so far; no one acquired yet.
    assert found["reward_cost"]["granted"]["coupons_fen"] == 500
    assert (found["reward_cost"]["acquired"], found["reward_cost"]["per_acquired_fen"]) == (0, None)


async def test_a_merged_contact_counts_once_as_its_survivor(
    committed: Runtime, api: httpx.AsyncClient, sim: SimulatedClock
) -> None:
    brand = await make_brand(committed)
    alice, survivor, merged = await members(committed, brand, 3)
    await add_referrals(committed, brand, referral(merged, alice, local(11, 5, 10), "pending"))
    await publish(
        committed,
        brand,
        joined(survivor, local(11, 8)),
        joined(merged, local(11, 5, 9)),
        did("page.view", merged, local(11, 6)),
        paid(merged, local(11, 9)),
    )
    # The users service merges them, then publishes the merge.
    async with unit_of_work(committed.sessionmaker) as session:
        await session.execute(
            text("UPDATE contacts SET merged_into_id = :s WHERE id = :m"),
            {"s": survivor, "m": merged},
        )
    merge = {"survivor_id": str(survivor), "merged_id": str(merged), "reason": "phone"}
    await publish(committed, brand, ("contact.merged", merge))
    # An order of the merged contact published before the merge, delivered after: the
    # survivor's, and earlier than the one known.
    await publish(committed, brand, paid(merged, local(11, 7)))
    assert await rows(
        committed,
        "SELECT contact_id, joined_at, first_paid_at FROM referral_contacts WHERE tenant_id = :t",
        t=brand.tenant_id,
    ) == [(survivor, local(11, 5, 9), local(11, 7))]
    # The merge delivered again changes nothing.
    ids = await rows(committed, "SELECT id FROM outbox_events WHERE type = 'contact.merged'")
    await committed.redis.enqueue_job(
        DELIVER_JOB, [i for (i,) in ids], _queue_name=committed.queue_name("points")
    )
    await work_until_idle(committed, "points")
    found = await report(api, brand)
    assert found["new_contacts"]["joined"] == 1 and found["new_contacts"]["level1"] == 1
    assert found["paid_conversion"]["invited"] == {"contacts": 1, "paid": 1, "share": 1.0}
    assert found["d1_retention"]["cohorts"] == [cohort("2026-11-05", 1, 1, 1.0)]


async def run_alert_job(runtime: Runtime) -> None:
    async with unit_of_work(runtime.sessionmaker) as session:
        await schedule(
            session, service="points", job="check_referral_retention", due_at=datetime.now(UTC)
        )
    await schedule_and_work(runtime, "points")


async def test_a_low_d1_retention_alerts_once_per_cohort_and_is_posted(
    committed: Runtime,
    api: httpx.AsyncClient,
    sim: SimulatedClock,
    receiver: tuple[AlertReceiver, str],
) -> None:
    hook, url = receiver
    brand = await make_brand(committed)
    await configure(api, brand, alert_webhook_url=url)
    inviter = await make_member(committed, brand)
    # Nov 20: 5 invitees, 1 back the next day (0.2 < 0.3). Nov 21: 4 invitees, none back
    # (too few to say). Nov 22: 5 invitees, 2 back (0.4).
    cohorts = {20: (5, 1), 21: (4, 0), 22: (5, 2)}
    for day, (size, back) in cohorts.items():
        invitees = [await make_member(committed, brand) for _ in range(size)]
        await add_referrals(
            committed,
            brand,
            *(referral(i, inviter, local(11, day, 10), "pending") for i in invitees),
        )
        await publish(
            committed, brand, *(did("checkin", i, local(11, day + 1, 9)) for i in invitees[:back])
        )
    # Just after midnight the day after's late events may still come: not measured yet.
    sim.at = local(11, 22, 1)
    await run_alert_job(committed)
    assert await rows(committed, "SELECT cohort_day FROM referral_alerts") == []
    hook.fail = True
    sim.at = local(11, 22, 3)
    await run_alert_job(committed)
    [(alert_id, error)] = await rows(committed, "SELECT id, delivery_error FROM referral_alerts")
    assert error is not None and "500" in error
    hook.fail = False
    for hours in (4, 5):  # posted on the next run, once; recorded once
        sim.at = local(11, 22, hours)
        await run_alert_job(committed)
    sim.at = local(11, 24, 10)  # Nov 22 measured: above the threshold
    await run_alert_job(committed)
    assert hook.bodies == [
        {
            "type": "points.referral_retention_alert",
            "tenant_id": str(brand.tenant_id),
            "alert_id": alert_id,
            "cohort_day": "2026-11-20",
            "invitees": 5,
            "retained": 1,
            "d1_retention": 0.2,
            "threshold": 0.3,
        }
    ]
    found = await report(api, brand)
    [shown] = found["alerts"]
    assert (shown["id"], shown["cohort_day"], shown["invitees"], shown["retained"]) == (
        alert_id,
        "2026-11-20",
        5,
        1,
    )
    assert shown["delivered_at"] is not None and shown["delivery_error"] is None
    assert [(c["day"], c["d1_retention"]) for c in found["d1_retention"]["cohorts"]] == [
        ("2026-11-20", 0.2),
        ("2026-11-21", 0.0),
        ("2026-11-22", 0.4),
    ]
    # Outside the alert's window the report shows no alert.
    assert (await report(api, brand, **{"from": "2026-11-21", "to": "2026-11-30"}))["alerts"] == []


async def test_windows_default_to_the_last_30_days_and_bad_ones_are_422(
    committed: Runtime, api: httpx.AsyncClient, sim: SimulatedClock
) -> None:
    brand = await make_brand(committed)
    sim.at = local(12, 2, 0, 30)  # Dec 1 in UTC
    default = (await api.get(REPORT, headers=brand.headers("analyst"))).json()["window"]
    assert (default["from"], default["to"], default["days"]) == ("2026-11-03", "2026-12-02", 30)
    only_to = await report(api, brand, to="2026-11-30")
    assert (only_to["window"]["from"], only_to["window"]["days"]) == ("2026-11-01", 30)
    longest = await report(api, brand, **{"from": "2025-12-01", "to": "2026-12-01"})
    assert longest["window"]["days"] == 366
    one_day = await report(api, brand, **{"from": "2026-11-30", "to": "2026-11-30"})
    assert one_day["window"]["days"] == 1
    for params, code in (
        ({"from": "2026-11-30", "to": "2026-11-01"}, "validation_error"),
        ({"from": "2025-11-30", "to": "2026-12-01"}, "validation_error"),  # 367 days
        ({"from": "2026-02-30"}, "validation_error"),
        ({"to": "yesterday"}, "validation_error"),
        ({"to": "0001-01-01"}, "validation_error"),
    ):
        answer = await api.get(REPORT, params=params, headers=brand.headers("analyst"))
        assert answer.status_code == 422, (params, answer.text)
        assert answer.json()["error"]["code"] == code
    assert (await api.get(REPORT, headers=brand.headers("staff"))).status_code == 403
    assert (await api.get(REPORT)).status_code == 401


async def test_a_month_of_12000_referrals_adds_up(
    committed: Runtime, api: httpx.AsyncClient, sim: SimulatedClock
) -> None:
    """Set-based at volume: 1,200 inviters with 10 referrals each over November, every
    fourth rewarded, pending, refused, revoked (by inviter), an eighth back the next day."""
    brand = await make_brand(committed)
    count, step = 12_000, 200  # a referral every 200 seconds
    inviters = [uuid.uuid4() for _ in range(1_200)]
    invitees = [uuid.uuid4() for _ in range(count)]
    async with unit_of_work(committed.sessionmaker) as session:
        await session.execute(
            text(
                """
                INSERT INTO referrals (tenant_id, invitee_id, inviter_id, code, source,
                                       event_key, status, reason, attributed_at, qualified_at)
                SELECT :t, u.invitee, (CAST(:inviters AS uuid[]))[1 + u.n % 1200], 'TESTCODE00',
                       'api', 'bulk:' || u.n,
                       (ARRAY['rewarded', 'pending', 'refused', 'revoked'])[1 + u.n % 4],
                       (ARRAY[NULL, NULL, 'daily_cap', 'fraud'])[1 + u.n % 4],
                       u.at, CASE WHEN u.n % 4 = 0 THEN u.at END
                  FROM (SELECT v.invitee, v.i - 1 AS n,
                               CAST(:start AS timestamptz)
                                   + (v.i - 1) * make_interval(secs => :step) AS at
                          FROM unnest(CAST(:invitees AS uuid[])) WITH ORDINALITY AS v(invitee, i)
                       ) AS u
                """
            ),
            {
                "t": brand.tenant_id,
                "inviters": inviters,
                "invitees": invitees,
                "step": step,
                "start": local(11, 1, 0),
            },
        )
        await session.execute(
            text(
                "INSERT INTO referral_activity (tenant_id, contact_id, day) "
                "SELECT :t, c, CAST(:first AS date) + n * :step / 86400 + 1 "
                "FROM unnest(CAST(:contacts AS uuid[]), CAST(:ns AS int[])) AS u(c, n)"
            ),
            {
                "t": brand.tenant_id,
                "contacts": invitees[::8],
                "ns": list(range(0, count, 8)),
                "step": step,
                "first": date(2026, 11, 1),
            },
        )
    found = await report(api, brand)
    assert found["funnel"] == {
        "invites": 12_000,
        "attributed": 9_000,
        "qualified": 3_000,
        "succeeded": 3_000,
        "revoked": 3_000,
        "revoked_by_reason": {"fraud": 3_000},
        "refused": 3_000,
        "refused_by_reason": {"daily_cap": 3_000},
    }
    # An inviter's referrals all have its number's remainder by 4 (1,200 is a multiple).
    assert found["k_factor"] == {
        "inviters": 900,
        "attributed": 9_000,
        "succeeded": 3_000,
        "invites_per_inviter": 10.0,
        "conversion": 0.3333,
        "k_factor": 3.3333,
    }
    rewarded = sorted(str(inviter) for inviter in inviters[::4])
    assert found["top_inviters"] == [
        {"contact_id": contact, "attributed": 10, "succeeded": 10} for contact in rewarded[:10]
    ]
    by_day: dict[int, list[int]] = {}
    for i in range(count):
        if i % 4 != 2:
            by_day.setdefault(i * step // 86_400, [0, 0])[0] += 1
            by_day[i * step // 86_400][1] += i % 8 == 0
    assert found["d1_retention"]["cohorts"] == [
        cohort(str(date(2026, 11, 1) + timedelta(days=d)), n, kept, round(kept / n, 4))
        for d, (n, kept) in sorted(by_day.items())
    ]
    assert found["d1_retention"]["invitees"] == 9_000
    assert found["d1_retention"]["retained"] == 1_500
