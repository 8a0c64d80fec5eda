"""GET /v1/contacts/{contact_id}/profile: stage, scores, tags at their current weights,
segments; the contact scope of staff keys; merged and erased contacts."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.tagging import clock
from services.tagging.facts import Changes
from services.tagging.profile import ingest, lifecycle, scores
from services.users.models import Contact
from shared.events import Event
from tests.helpers import bearer, make_key, make_tenant
from tests.tagging.test_ingest import business, event

NOW = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)


async def feed(session: AsyncSession, events: list[Event]) -> None:
    changes = Changes()
    await ingest.apply(session, events, changes, NOW)
    await lifecycle.recompute(session, changes, NOW)
    await scores.recompute(session, changes, NOW)


class Brand:
    def __init__(self, tenant: uuid.UUID, keys: dict[str, str]) -> None:
        self.tenant = tenant
        self.keys = keys

    def headers(self, role: str) -> dict[str, str]:
        return bearer(self.keys[role])


@pytest.fixture
async def brand(session: AsyncSession) -> Brand:
    tenant = await make_tenant(session)
    keys = {r: await make_key(session, tenant, r) for r in ("admin", "analyst", "staff")}
    return Brand(tenant.id, keys)


async def contact_of(session: AsyncSession, brand: Brand, owner: str | None) -> uuid.UUID:
    """A contact of the users service (the scope checks it), owned by `owner`."""
    contact = Contact(id=uuid.uuid4(), tenant_id=brand.tenant, owner_staff_userid=owner)
    session.add(contact)
    await session.flush()
    return contact.id


async def tag(session: AsyncSession, brand: Brand, contact: uuid.UUID) -> int:
    """An interest tag of weight 40 set 30 days ago, in a group with a 30-day half-life."""
    group = await session.scalar(
        text(
            "INSERT INTO tag_groups (tenant_id, name, kind, half_life_days, floor) "
            "VALUES (:t, 'interest', 'interest', 30, 1) RETURNING id"
        ),
        {"t": brand.tenant},
    )
    tag_id = await session.scalar(
        text("INSERT INTO tags (tenant_id, group_id, name) VALUES (:t, :g, 'tea') RETURNING id"),
        {"t": brand.tenant, "g": group},
    )
    then = NOW - timedelta(days=30)
    await session.execute(
        text(
            "INSERT INTO contact_tags (tenant_id, contact_id, tag_id, weight, weighted_at, "
            "half_life_days, source, first_raised_at, last_raised_at, drops_at) "
            "VALUES (:t, :c, :tag, 40, :then, 30, 'rule', :then, :then, :drops)"
        ),
        {
            "t": brand.tenant,
            "c": contact,
            "tag": tag_id,
            "then": then,
            "drops": NOW + timedelta(days=100),
        },
    )
    assert isinstance(tag_id, int)
    return tag_id


async def segment(session: AsyncSession, brand: Brand, contact: uuid.UUID) -> int:
    segment_id = await session.scalar(
        text(
            "INSERT INTO segments (tenant_id, name, kind, status) "
            "VALUES (:t, 'tea lovers', 'static', 'ready') RETURNING id"
        ),
        {"t": brand.tenant},
    )
    await session.execute(
        text(
            "INSERT INTO segment_members (segment_id, contact_id, tenant_id, entered_at) "
            "VALUES (:s, :c, :t, :at)"
        ),
        {"s": segment_id, "c": contact, "t": brand.tenant, "at": NOW},
    )
    assert isinstance(segment_id, int)
    return segment_id


async def get(
    client: httpx.AsyncClient, brand: Brand, contact: uuid.UUID, role: str = "admin"
) -> httpx.Response:
    with clock.use(lambda: NOW):
        return await client.get(f"/v1/contacts/{contact}/profile", headers=brand.headers(role))


async def test_the_profile_of_a_contact(
    client: httpx.AsyncClient, session: AsyncSession, brand: Brand
) -> None:
    contact = await contact_of(session, brand, "staff-1")
    c = str(contact)
    created = NOW - timedelta(days=100)
    await feed(
        session,
        [
            event(
                brand.tenant,
                "contact.profile_changed",
                {
                    "contact_id": c,
                    "created_at": created.isoformat(),
                    "owner_staff": "staff-1",
                    "channel": "live-1",
                    "attributes": {"city": "Hangzhou"},
                },
            ),
            event(
                brand.tenant,
                "consent.changed",
                {"contact_id": c, "channel": "sms", "status": "opted_out"},
            ),
            event(
                brand.tenant,
                "tier.changed",
                {"contact_id": c, "from": None, "to": "gold", "reason": "joined"},
            ),
            business(
                brand.tenant,
                "order.paid",
                contact,
                NOW - timedelta(days=2),
                order_id="A",
                amount_fen=12900,
            ),
        ],
    )
    tag_id = await tag(session, brand, contact)
    segment_id = await segment(session, brand, contact)

    response = await get(client, brand, contact)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["contact_id"] == c
    assert (body["owner_staff"], body["channel"]) == ("staff-1", "live-1")
    assert body["consent"] == {"sms": "opted_out"} and body["points_tier"] == "gold"
    assert body["attributes"] == {"city": "Hangzhou"}
    assert datetime.fromisoformat(body["created_at"]) == created
    assert body["lifecycle"]["stage"] == "new"
    assert datetime.fromisoformat(body["lifecycle"]["due_at"]) == NOW + timedelta(days=5)
    rfm = body["rfm"]
    assert (rfm["recency_days"], rfm["frequency"], rfm["monetary_fen"]) == (2, 1, 12900)
    # The only buyer: every cut point is its own value, so R is 5 and F, M are 1.
    assert (rfm["r"], rfm["f"], rfm["m"]) == (5, 1, 1)
    assert (rfm["cell"], rfm["cell_name"]) == ("general_develop", "一般发展")
    assert rfm["value_tier"] == "mid_active"
    assert 0 <= body["health_score"] <= 100
    # Weight 40 a half-life ago: 20 now.
    assert [(t["tag_id"], t["name"], t["group"]) for t in body["tags"]] == [
        (tag_id, "tea", "interest")
    ]
    assert body["tags"][0]["weight"] == pytest.approx(20)
    assert [s["segment_id"] for s in body["segments"]] == [segment_id]

    analyst = await get(client, brand, contact, "analyst")
    assert analyst.status_code == 200


async def test_staff_keys_see_only_their_contacts(
    client: httpx.AsyncClient, session: AsyncSession, brand: Brand
) -> None:
    mine = await contact_of(session, brand, "staff-1")
    theirs = await contact_of(session, brand, "staff-2")
    await feed(
        session,
        [business(brand.tenant, "share", mine, NOW), business(brand.tenant, "share", theirs, NOW)],
    )
    assert (await get(client, brand, mine, "staff")).status_code == 200
    refused = await get(client, brand, theirs, "staff")
    assert refused.status_code == 404
    unknown = await get(client, brand, uuid.uuid4(), "staff")
    assert refused.json() == unknown.json()
    assert (await get(client, brand, theirs, "admin")).status_code == 200


async def test_merged_erased_and_unseen_contacts(
    client: httpx.AsyncClient, session: AsyncSession, brand: Brand
) -> None:
    survivor = await contact_of(session, brand, None)
    merged = await contact_of(session, brand, None)
    erased = await contact_of(session, brand, None)
    unseen = await contact_of(session, brand, None)
    await feed(
        session,
        [
            business(brand.tenant, "share", merged, NOW),
            event(
                brand.tenant,
                "contact.merged",
                {"survivor_id": str(survivor), "merged_id": str(merged), "reason": "phone"},
            ),
            event(brand.tenant, "contact.erased", {"contact_id": str(erased), "pseudonym": "e"}),
        ],
    )
    response = await get(client, brand, merged)
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "profile_merged"
    assert error["details"] == {"merged_into": str(survivor)}
    response = await get(client, brand, erased)
    assert response.status_code == 404 and response.json()["error"]["code"] == "profile_erased"
    response = await get(client, brand, survivor)
    assert response.status_code == 200 and response.json()["last_interaction_at"] is not None
    # Known to the users service, no event of it here yet: an empty profile.
    response = await get(client, brand, unseen)
    assert response.status_code == 200
    body = response.json()
    assert body["lifecycle"] == {"stage": "potential", "since": None, "due_at": None}
    assert body["created_at"] is None and body["tags"] == [] and body["rfm"]["cell"] is None
    assert (await get(client, brand, uuid.uuid4())).status_code == 404
