"""Lifecycle over the real bus: an order through the relay and the tagging worker, then
the passage of time through the scheduler's recurring sweep job."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import text

import services.tagging.tasks  # noqa: F401  (registers the handlers and jobs)
from services.tagging import clock
from shared.db import unit_of_work
from shared.events import publish
from shared.runtime import Runtime
from shared.scheduler import RECURRING, schedule
from tests.helpers import make_tenant
from tests.shared.bus_support import relay_all, schedule_and_work, work_until_idle

T0 = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)


async def test_an_order_then_the_sweep_over_the_bus(committed: Runtime) -> None:
    assert ("tagging", "tagging.lifecycle_sweep", 60) in {
        (r.service, r.name, r.every_seconds) for r in RECURRING
    }
    async with unit_of_work(committed.sessionmaker) as session:
        tenant = (await make_tenant(session)).id
        contact = uuid.uuid4()
        await publish(
            session,
            "order.paid",
            {
                "contact_id": str(contact),
                "event_id": "shop-1",
                "occurred_at": T0.isoformat(),
                "properties": {"order_id": "SO-1", "amount_fen": 9900},
                "source": "event",
            },
            tenant_id=tenant,
        )
    with clock.use(lambda: T0 + timedelta(minutes=1)):
        await relay_all(committed)
        await work_until_idle(committed, "tagging")

    async def stage() -> tuple[str, datetime | None]:
        async with unit_of_work(committed.sessionmaker) as session:
            row = (
                await session.execute(
                    text(
                        "SELECT lifecycle_stage, stage_due_at FROM tagging_profiles "
                        "WHERE contact_id = :c"
                    ),
                    {"c": contact},
                )
            ).one()
            return row.lifecycle_stage, row.stage_due_at

    assert await stage() == ("new", T0 + timedelta(days=7))

    async with unit_of_work(committed.sessionmaker) as session:
        await schedule(
            session,
            service="tagging",
            job="tagging.lifecycle_sweep",
            due_at=datetime.now(UTC) - timedelta(seconds=1),
        )
    with clock.use(lambda: T0 + timedelta(days=8)):
        await schedule_and_work(committed, "tagging")
    assert await stage() == ("active", T0 + timedelta(days=30))
    async with unit_of_work(committed.sessionmaker) as session:
        changes = [
            (p["from"], p["to"])
            for (p,) in await session.execute(
                text(
                    "SELECT payload FROM outbox_events "
                    "WHERE type = 'contact.lifecycle_changed' ORDER BY id"
                )
            )
        ]
        done = await session.scalar(
            text("SELECT status FROM scheduled_jobs WHERE job = 'tagging.lifecycle_sweep'")
        )
    assert changes == [("potential", "new"), ("new", "active")]
    assert done == "done"


async def test_the_hourly_score_job_stores_the_boundaries(committed: Runtime) -> None:
    assert ("tagging", "tagging.score_boundaries", 3600) in {
        (r.service, r.name, r.every_seconds) for r in RECURRING
    }
    async with unit_of_work(committed.sessionmaker) as session:
        tenant = (await make_tenant(session)).id
        for n, fen in enumerate((100, 200, 300)):
            await publish(
                session,
                "order.paid",
                {
                    "contact_id": str(uuid.uuid4()),
                    "event_id": f"shop-{n}",
                    "occurred_at": (T0 - timedelta(days=n)).isoformat(),
                    "properties": {"order_id": f"SO-{n}", "amount_fen": fen},
                    "source": "event",
                },
                tenant_id=tenant,
            )
    with clock.use(lambda: T0):
        await relay_all(committed)
        await work_until_idle(committed, "tagging")
    async with unit_of_work(committed.sessionmaker) as session:
        await session.execute(text("DELETE FROM tagging_score_boundaries"))
        await schedule(
            session,
            service="tagging",
            job="tagging.score_boundaries",
            due_at=datetime.now(UTC) - timedelta(seconds=1),
        )
    with clock.use(lambda: T0):
        await schedule_and_work(committed, "tagging")
    async with unit_of_work(committed.sessionmaker) as session:
        row = (
            await session.execute(
                text("SELECT tenant_id, buyers, monetary_fen FROM tagging_score_boundaries")
            )
        ).one()
    assert (row.tenant_id, row.buyers) == (tenant, 3)
    assert row.monetary_fen == [140, 180, 220, 260]
