"""Lifecycle stages: from events, with the passage of time on a simulated clock (the
sweep reads only the profiles due), the tenant's thresholds, deleting the staff."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.tagging import clock
from services.tagging.facts import Changes
from services.tagging.profile import ingest, lifecycle
from services.tagging.profile.tasks import sweep_due_stages
from shared.events import Event
from tests.helpers import bearer, make_key, make_tenant
from tests.tagging.test_ingest import business, event

T0 = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)


async def feed(session: AsyncSession, events: list[Event], now: datetime) -> Changes:
    changes = Changes()
    await ingest.apply(session, events, changes, now)
    await lifecycle.recompute(session, changes, now)
    return changes


async def stage(session: AsyncSession, contact: uuid.UUID) -> tuple[Any, ...]:
    row = (
        await session.execute(
            text(
                "SELECT lifecycle_stage, stage_since, stage_due_at FROM tagging_profiles "
                "WHERE contact_id = :c"
            ),
            {"c": contact},
        )
    ).one()
    return tuple(row)


async def published(session: AsyncSession, contact: uuid.UUID) -> list[tuple[str, str, str]]:
    rows = await session.execute(
        text(
            "SELECT payload FROM outbox_events WHERE type = 'contact.lifecycle_changed' "
            "AND payload->>'contact_id' = :c ORDER BY id"
        ),
        {"c": str(contact)},
    )
    return [(p["from"], p["to"], p["reason"]) for (p,) in rows]


async def sweep_at(session: AsyncSession, at: datetime) -> int:
    with clock.use(lambda: at):
        return await sweep_due_stages(session)


def added(tenant: uuid.UUID, contact: uuid.UUID, at: datetime = T0) -> Event:
    return event(
        tenant,
        "contact.added",
        {
            "contact_id": str(contact),
            "occurred_at": at.isoformat(),
            "staff_userid": "staff-1",
            "state": None,
            "welcome_code": None,
            "new_contact": True,
        },
        at=at,
    )


async def test_stages_follow_orders_and_the_passage_of_time(session: AsyncSession) -> None:
    tenant = (await make_tenant(session)).id
    contact = uuid.uuid4()
    await feed(session, [added(tenant, contact)], T0)
    assert (await stage(session, contact))[0] == "potential"
    assert (await stage(session, contact))[2] is None  # nothing happens with time alone

    changes = await feed(
        session, [business(tenant, "order.paid", contact, T0, order_id="A", amount_fen=100)], T0
    )
    assert await stage(session, contact) == ("new", T0, T0 + timedelta(days=7))
    assert ("field", "lifecycle_stage") in changes.contacts(tenant)[contact]

    assert await sweep_at(session, T0 + timedelta(days=6)) == 0  # not due yet
    assert (await stage(session, contact))[0] == "new"
    assert await sweep_at(session, T0 + timedelta(days=7, minutes=1)) == 1
    assert await stage(session, contact) == (
        "active",
        T0 + timedelta(days=7),
        T0 + timedelta(days=30),
    )
    await sweep_at(session, T0 + timedelta(days=31))
    assert await stage(session, contact) == (
        "silent",
        T0 + timedelta(days=30),
        T0 + timedelta(days=90),
    )
    # An interaction while silent: active again, from now.
    back = T0 + timedelta(days=40)
    await feed(session, [business(tenant, "comment", contact, back)], back)
    assert await stage(session, contact) == ("active", back, back + timedelta(days=30))
    # Swept late: silent was due at +30 and churned at +90; it is churned since +90.
    await sweep_at(session, back + timedelta(days=95))
    assert await stage(session, contact) == ("churned", back + timedelta(days=90), None)
    assert [to for _, to, _ in await published(session, contact)][:4] == [
        "new",
        "active",
        "silent",
        "active",
    ]
    assert (await published(session, contact))[-1][1:] == ("churned", "inactive")


async def test_deleting_the_staff_churns_at_once(session: AsyncSession) -> None:
    tenant = (await make_tenant(session)).id
    contact = uuid.uuid4()
    await feed(
        session,
        [
            added(tenant, contact),
            business(tenant, "order.paid", contact, T0, order_id="A", amount_fen=1),
        ],
        T0,
    )
    lost_at = T0 + timedelta(days=2)
    lost = event(
        tenant,
        "contact.lost",
        {
            "contact_id": str(contact),
            "occurred_at": lost_at.isoformat(),
            "staff_userid": "staff-1",
            "reason": "deleted_by_contact",
        },
    )
    await feed(session, [lost], lost_at + timedelta(minutes=5))
    assert await stage(session, contact) == ("churned", lost_at, None)
    assert (await published(session, contact))[-1] == ("new", "churned", "deleted_by_contact")
    # The staff deleting the contact is no churn by itself.
    other = uuid.uuid4()
    await feed(session, [added(tenant, other), business(tenant, "share", other, T0)], T0)
    await feed(
        session,
        [
            event(
                tenant,
                "contact.lost",
                {**lost.payload, "contact_id": str(other), "reason": "deleted_by_staff"},
            )
        ],
        T0,
    )
    assert (await stage(session, other))[0] == "potential"
    # Added again: the stage follows activity again.
    again = lost_at + timedelta(days=1)
    await feed(session, [added(tenant, contact, again)], again)
    assert (await stage(session, contact))[0] == "new"


async def test_thresholds_are_the_tenants(session: AsyncSession, client: httpx.AsyncClient) -> None:
    tenant = await make_tenant(session)
    admin = bearer(await make_key(session, tenant, "admin"))
    analyst = bearer(await make_key(session, tenant, "analyst"))
    response = await client.get("/v1/tagging/profile/settings", headers=analyst)
    assert response.status_code == 200
    assert response.json()["lifecycle"] == {"new_days": 7, "active_days": 30, "churn_days": 90}
    body = {"lifecycle": {"new_days": 3, "active_days": 10, "churn_days": 20}}
    assert (
        await client.put("/v1/tagging/profile/settings", json=body, headers=analyst)
    ).status_code == 403
    bad = await client.put(
        "/v1/tagging/profile/settings",
        json={"lifecycle": {"active_days": 30, "churn_days": 30}},
        headers=admin,
    )
    assert bad.status_code == 422 and bad.json()["error"]["code"]
    needs_thresholds = await client.put(
        "/v1/tagging/profile/settings", json={"rfm": {"scoring": "thresholds"}}, headers=admin
    )
    assert needs_thresholds.status_code == 422
    unsorted = {"recency_days": [30, 7, 90, 180], "frequency": [1, 2, 3, 4]}
    unsorted_body = {"rfm": {"thresholds": {**unsorted, "monetary_fen": [1, 2, 3, 4]}}}
    refused = await client.put("/v1/tagging/profile/settings", json=unsorted_body, headers=admin)
    assert refused.status_code == 422
    unknown = await client.put("/v1/tagging/profile/settings", json={"colour": 1}, headers=admin)
    assert unknown.status_code == 422
    # Nothing was stored by the refused requests.
    assert (await client.get("/v1/tagging/profile/settings", headers=admin)).json()["lifecycle"][
        "new_days"
    ] == 7
    staff = bearer(await make_key(session, tenant, "staff"))
    assert (await client.get("/v1/tagging/profile/settings", headers=staff)).status_code == 403
    operator = bearer(await make_key(session, tenant, "operator"))
    response = await client.put("/v1/tagging/profile/settings", json=body, headers=operator)
    assert response.status_code == 200, response.text
    assert (await client.get("/v1/tagging/profile/settings", headers=admin)).json()[
        "lifecycle"
    ] == body["lifecycle"]

    contact = uuid.uuid4()
    await feed(
        session, [business(tenant.id, "order.paid", contact, T0, order_id="A", amount_fen=1)], T0
    )
    assert await stage(session, contact) == ("new", T0, T0 + timedelta(days=3))
    await sweep_at(session, T0 + timedelta(days=4))
    assert (await stage(session, contact))[0] == "active"
    await sweep_at(session, T0 + timedelta(days=11))
    assert (await stage(session, contact))[0] == "silent"
    await sweep_at(session, T0 + timedelta(days=21))
    assert (await stage(session, contact))[0] == "churned"


async def test_merged_and_erased_profiles_leave_the_sweep(session: AsyncSession) -> None:
    tenant = (await make_tenant(session)).id
    a, b = uuid.uuid4(), uuid.uuid4()
    await feed(
        session,
        [
            business(tenant, "order.paid", a, T0, order_id="A", amount_fen=1),
            business(tenant, "order.paid", b, T0, order_id="B", amount_fen=1),
        ],
        T0,
    )
    await feed(
        session,
        [
            event(
                tenant,
                "contact.merged",
                {"survivor_id": str(a), "merged_id": str(b), "reason": "x"},
            ),
        ],
        T0,
    )
    assert (await stage(session, b))[2] is None
    assert await sweep_at(session, T0 + timedelta(days=8)) == 1  # a alone
