"""RFM scores, cells and value tiers on hand-computed datasets (fixed thresholds and the
tenant's quintiles), the periodic boundaries, and the health formula's bounds."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.tagging import clock
from services.tagging.facts import Changes
from services.tagging.profile import ingest, scores, service
from services.tagging.profile.schemas import ProfileSettings
from services.tagging.profile.tasks import rescore
from shared.events import Event
from tests.helpers import make_tenant
from tests.tagging.test_ingest import business, event

NOW = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)


def days_ago(n: float) -> datetime:
    return NOW - timedelta(days=n)


def order(tenant: uuid.UUID, contact: uuid.UUID, order_id: str, fen: int, ago: float) -> Event:
    return business(tenant, "order.paid", contact, days_ago(ago), order_id=order_id, amount_fen=fen)


def refund(tenant: uuid.UUID, contact: uuid.UUID, order_id: str, fen: int, ago: float) -> Event:
    return business(
        tenant, "order.refunded", contact, days_ago(ago), order_id=order_id, refund_fen=fen
    )


def known_since(tenant: uuid.UUID, contact: uuid.UUID, ago: float) -> Event:
    return event(
        tenant,
        "contact.profile_changed",
        {
            "contact_id": str(contact),
            "created_at": days_ago(ago).isoformat(),
            "owner_staff": None,
            "channel": None,
            "attributes": {},
        },
    )


async def feed(session: AsyncSession, events: list[Event]) -> Changes:
    changes = Changes()
    await ingest.apply(session, events, changes, NOW)
    await scores.recompute(session, changes, NOW)
    return changes


async def scored(session: AsyncSession, contact: uuid.UUID) -> dict[str, Any]:
    row = (
        await session.execute(
            text(
                "SELECT recency_days, frequency, monetary_fen, r_score, f_score, m_score, "
                "rfm_cell, value_tier, health_score FROM tagging_profiles WHERE contact_id = :c"
            ),
            {"c": contact},
        )
    ).one()
    return dict(row._mapping)


def rfm(found: dict[str, Any]) -> tuple[Any, ...]:
    return (
        found["r_score"],
        found["f_score"],
        found["m_score"],
        found["rfm_cell"],
        found["value_tier"],
    )


async def test_fixed_thresholds_give_the_cells_and_tiers(session: AsyncSession) -> None:
    tenant = (await make_tenant(session)).id
    await service.save_settings(
        session,
        tenant,
        ProfileSettings.model_validate(
            {
                "rfm": {
                    "scoring": "thresholds",
                    "thresholds": {
                        "recency_days": [7, 30, 90, 180],
                        "frequency": [1, 2, 4, 8],
                        "monetary_fen": [10000, 50000, 100000, 500000],
                    },
                }
            }
        ),
    )
    a, b, c, d, o, n = (uuid.uuid4() for _ in range(6))
    changes = await feed(
        session,
        [
            known_since(tenant, a, 400),
            order(tenant, a, "A1", 60000, 3),
            order(tenant, a, "A2", 50000, 10),
            order(tenant, a, "A3", 20000, 20),
            order(tenant, b, "B1", 200000, 100),
            refund(tenant, b, "B1", 150000, 99),
            order(tenant, c, "C1", 600000, 200),
            order(tenant, d, "D1", 5000, 5),
            refund(tenant, d, "D1", 5000, 4),
            order(tenant, o, "O1", 90000, 400),
            business(tenant, "page.view", n, days_ago(1)),
        ],
    )
    # A: 3 days (<= 7: 5), 3 orders (> 1, > 2: 3), 130,000 fen (> 10k, 50k, 100k: 4).
    found = await scored(session, a)
    assert (found["recency_days"], found["frequency"], found["monetary_fen"]) == (3, 3, 130000)
    assert rfm(found) == (5, 3, 4, "important_value", "high_value")
    # B: 100 days (<= 180: 2), 1 order (1), 50,000 net of the refund (> 10k only: 2).
    found = await scored(session, b)
    assert found["monetary_fen"] == 50000
    assert rfm(found) == (2, 1, 2, "general_retain", "mid_active")
    # C: 200 days (1), 1 order (1), 600,000 (5): a big spender gone quiet.
    assert rfm(await scored(session, c)) == (1, 1, 5, "important_retain", "dormant")
    # D: its only order wholly refunded; O: ordered before the window. Both dormant.
    assert rfm(await scored(session, d)) == (None, None, None, None, "dormant")
    assert rfm(await scored(session, o)) == (None, None, None, None, "dormant")
    # N never ordered.
    assert rfm(await scored(session, n)) == (None, None, None, None, None)
    facts = changes.contacts(tenant)[a]
    assert {("field", "rfm_cell"), ("field", "value_tier"), ("field", "health_score")} <= facts

    # Health of A = 100 * E * S * D: 3 interactions in 30 days against the target of 10
    # (0.1 + 0.9 * 0.3 = 0.37), M of 4 (0.2 + 0.8 * 3/4 = 0.8), known over a year (1.0).
    assert (await scored(session, a))["health_score"] == 30

    # A refund moves A's monetary down a score: the cell follows.
    changes = await feed(session, [refund(tenant, a, "A1", 60000, 1)])
    # Its last order is now 10 days old (4), 2 orders (2), 70,000 fen (3).
    assert rfm(await scored(session, a)) == (4, 2, 3, "important_develop", "mid_active")
    assert ("field", "rfm_cell") in changes.contacts(tenant)[a]


async def test_quintiles_of_the_tenant_and_the_periodic_boundaries(session: AsyncSession) -> None:
    tenant = (await make_tenant(session)).id
    buyers = [uuid.uuid4() for _ in range(5)]
    # Buyer i (1-5): one order i days ago of (6 - i) * 100 fen. Quintile cut points of
    # recency 1..5 are 1.8, 2.6, 3.4, 4.2; of monetary 100..500: 180, 260, 340, 420; of
    # frequency (all 1): 1, so every F is 1.
    await feed(
        session,
        [order(tenant, c, f"O{i}", (6 - i) * 100, i) for i, c in enumerate(buyers, start=1)],
    )
    found = [rfm(await scored(session, c)) for c in buyers]
    assert found == [
        (5, 1, 5, "important_develop", "mid_active"),
        (4, 1, 4, "important_develop", "mid_active"),
        (3, 1, 3, "important_develop", "mid_active"),
        (2, 1, 2, "general_retain", "mid_active"),
        (1, 1, 1, "general_retain", "dormant"),
    ]
    stored = (
        await session.execute(
            text("SELECT recency_days, monetary_fen, buyers FROM tagging_score_boundaries")
        )
    ).one()
    assert [round(x, 2) for x in stored.recency_days] == [1.8, 2.6, 3.4, 4.2]
    assert stored.monetary_fen == [180, 260, 340, 420] and stored.buyers == 5

    # A new big buyer is scored against the stored cut points; the others keep theirs.
    big = uuid.uuid4()
    await feed(session, [order(tenant, big, "BIG", 100000, 1), order(tenant, big, "BIG2", 1, 1)])
    assert rfm(await scored(session, big)) == (5, 5, 5, "important_value", "high_value")
    assert rfm(await scored(session, buyers[0]))[2] == 5
    # The periodic job recomputes the cut points over six buyers and rescores everyone.
    with clock.use(lambda: NOW):
        changes = await rescore(session)
    stored = (await session.execute(text("SELECT buyers FROM tagging_score_boundaries"))).one()
    assert stored.buyers == 6
    # Monetary 600 of buyer 1 is no longer above the last cut point (p80 of 6 buyers).
    assert rfm(await scored(session, buyers[0]))[2] == 4
    # Its health too: M 5 -> 4, and the engagement reference (the 90th percentile of
    # interactions) rose from 1 to 1.5 with the big buyer's two orders.
    assert ("field", "health_score") in changes[tenant][buyers[0]]


async def test_health_stays_within_0_and_100(session: AsyncSession) -> None:
    tenant = (await make_tenant(session)).id
    thresholds = {"recency_days": [7, 30, 90, 180], "frequency": [1, 2, 3, 4]}
    await service.save_settings(
        session,
        tenant,
        ProfileSettings.model_validate(
            {
                "rfm": {
                    "scoring": "thresholds",
                    "thresholds": {**thresholds, "monetary_fen": [1, 2, 3, 4]},
                }
            }
        ),
    )
    best, worst, idle = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await feed(
        session,
        [
            known_since(tenant, best, 800),
            *[business(tenant, "comment", best, days_ago(i % 20)) for i in range(40)],
            order(tenant, best, "B1", 999999, 1),
            known_since(tenant, worst, 0),
            known_since(tenant, idle, 365),
            # Only before the engagement window: no engagement now.
            business(tenant, "comment", idle, days_ago(45)),
        ],
    )
    assert (await scored(session, best))["health_score"] == 100
    assert (await scored(session, worst))["health_score"] == 0
    # 100 * 0.1 (no engagement) * 0.1 (no order) * 1.0 (known a year) = 1.
    assert (await scored(session, idle))["health_score"] == 1
