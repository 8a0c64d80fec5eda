"""Manual enrolment over HTTP: a list or a segment enters a live journey's current
version at its entry step, each contact once per occurrence, under the re-entry
policy; concurrent enrolments of the same contacts enter each once."""

from __future__ import annotations

import asyncio
import copy
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.campaigns import clock
from services.tagging.segments.models import Segment
from services.users.models import Contact
from shared.db import unit_of_work
from shared.models import Tenant
from shared.runtime import Runtime
from tests.campaigns.test_journeys_api import WELCOME
from tests.helpers import bearer, make_key, make_tenant

NOW = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)


@pytest.fixture
def moving_clock() -> Any:
    now = [NOW]
    with clock.use(lambda: now[0]):
        yield now


async def _contacts(session: AsyncSession, tenant: Tenant, n: int) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in range(n)]
    session.add_all(Contact(id=i, tenant_id=tenant.id) for i in ids)
    await session.flush()
    return ids


async def _live(client: httpx.AsyncClient, headers: dict[str, str], **changes: Any) -> int:
    journey = {**copy.deepcopy(WELCOME), **changes}
    created = await client.post("/v1/campaigns", json=journey, headers=headers)
    assert created.status_code == 201, created.text
    cid = int(created.json()["id"])
    assert (await client.post(f"/v1/campaigns/{cid}/launch", headers=headers)).status_code == 200
    return cid


async def _enrolments(session: AsyncSession, cid: int) -> list[tuple[uuid.UUID, str, int, str]]:
    rows = await session.execute(
        text(
            "SELECT contact_id, step_id, version, status FROM campaign_enrolments "
            "WHERE campaign_id = :c ORDER BY contact_id, entered_at"
        ),
        {"c": cid},
    )
    return [(r[0], r[1], r[2], r[3]) for r in rows]


async def test_a_list_enters_the_current_version_at_the_entry_each_once(
    client: httpx.AsyncClient, session: AsyncSession, moving_clock: list[datetime]
) -> None:
    tenant = await make_tenant(session)
    h = bearer(await make_key(session, tenant, "operator"))
    cid = await _live(client, h)
    a, b, merged, erased = await _contacts(session, tenant, 4)
    await session.execute(
        text("UPDATE contacts SET merged_into_id = :s WHERE id = :m"), {"s": b, "m": merged}
    )
    await session.execute(
        text("UPDATE contacts SET erased_at = now() WHERE id = :e"), {"e": erased}
    )
    missing = uuid.uuid4()
    body = {"contact_ids": [str(c) for c in (a, b, merged, erased, missing, a)]}
    first = await client.post(f"/v1/campaigns/{cid}/enrol", json=body, headers=h)
    assert first.status_code == 200, first.text
    found = first.json()
    assert found["enrolled"] == 2, "a, and b (the merged contact's survivor) once"
    assert found["reentry_refused"] == 0
    assert sorted((s["contact_id"], s["reason"]) for s in found["skipped"]) == sorted(
        [(str(erased), "erased"), (str(missing), "missing")]
    )
    assert sorted(await _enrolments(session, cid)) == sorted(
        [(a, "s1", 1, "active"), (b, "s1", 1, "active")]
    )
    # Policy "once" (the default): never again.
    again = await client.post(f"/v1/campaigns/{cid}/enrol", json=body, headers=h)
    assert again.json()["enrolled"] == 0 and again.json()["reentry_refused"] == 2
    assert len(await _enrolments(session, cid)) == 2

    # A new version: new enrolments take it, the enrolled stay on theirs.
    edited = copy.deepcopy(WELCOME)
    edited["reentry"] = {"policy": "every_time"}
    edited["steps"].insert(0, {"id": "s0", "type": "wait", "seconds": 5, "next": "s1"})
    assert (await client.put(f"/v1/campaigns/{cid}", json=edited, headers=h)).json()["version"] == 2
    c, *_ = await _contacts(session, tenant, 1)
    await client.post(
        f"/v1/campaigns/{cid}/enrol", json={"contact_ids": [str(a), str(c)]}, headers=h
    )
    rows = await _enrolments(session, cid)
    assert (c, "s0", 2, "active") in rows and (a, "s0", 2, "active") in rows, (
        "every_time: a enters again, on version 2"
    )
    assert (a, "s1", 1, "active") in rows and (b, "s1", 1, "active") in rows


async def test_once_per_days_lets_a_contact_in_again_after_the_days(
    client: httpx.AsyncClient, session: AsyncSession, moving_clock: list[datetime]
) -> None:
    tenant = await make_tenant(session)
    h = bearer(await make_key(session, tenant, "operator"))
    cid = await _live(client, h, reentry={"policy": "once_per_days", "days": 7})
    [a] = await _contacts(session, tenant, 1)
    body = {"contact_ids": [str(a)]}
    assert (await client.post(f"/v1/campaigns/{cid}/enrol", json=body, headers=h)).json()[
        "enrolled"
    ] == 1
    moving_clock[0] = NOW + timedelta(days=6, hours=23)
    assert (await client.post(f"/v1/campaigns/{cid}/enrol", json=body, headers=h)).json()[
        "enrolled"
    ] == 0
    moving_clock[0] = NOW + timedelta(days=7)
    assert (await client.post(f"/v1/campaigns/{cid}/enrol", json=body, headers=h)).json()[
        "enrolled"
    ] == 1
    assert len(await _enrolments(session, cid)) == 2


async def test_a_segment_enrols_in_one_statement_and_only_a_live_journey_enrols(
    client: httpx.AsyncClient, session: AsyncSession, moving_clock: list[datetime]
) -> None:
    tenant = await make_tenant(session)
    h = bearer(await make_key(session, tenant, "operator"))
    segment = Segment(tenant_id=tenant.id, name="vip", kind="static", status="ready")
    session.add(segment)
    await session.flush()
    members = [uuid.uuid4() for _ in range(300)]
    await session.execute(
        text(
            "INSERT INTO segment_members (segment_id, contact_id, tenant_id) "
            "SELECT :s, unnest(CAST(:ids AS uuid[])), :t"
        ),
        {"s": segment.id, "ids": members, "t": tenant.id},
    )
    draft = await client.post("/v1/campaigns", json={**WELCOME, "name": "draft"}, headers=h)
    refused = await client.post(
        f"/v1/campaigns/{draft.json()['id']}/enrol", json={"segment_id": segment.id}, headers=h
    )
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "campaign_status"

    cid = await _live(client, h)
    enrolled = await client.post(
        f"/v1/campaigns/{cid}/enrol", json={"segment_id": segment.id}, headers=h
    )
    assert enrolled.status_code == 200, enrolled.text
    assert enrolled.json()["enrolled"] == 300
    assert sorted(c for c, *_ in await _enrolments(session, cid)) == sorted(members)
    unknown = await client.post(
        f"/v1/campaigns/{cid}/enrol", json={"segment_id": segment.id + 999}, headers=h
    )
    assert unknown.status_code == 422 and unknown.json()["error"]["details"]["path"] == "segment_id"
    both = await client.post(
        f"/v1/campaigns/{cid}/enrol",
        json={"segment_id": segment.id, "contact_ids": [str(members[0])]},
        headers=h,
    )
    assert both.status_code == 422
    analyst = bearer(await make_key(session, tenant, "analyst"))
    forbidden = await client.post(
        f"/v1/campaigns/{cid}/enrol", json={"segment_id": segment.id}, headers=analyst
    )
    assert forbidden.status_code == 403


async def test_concurrent_enrolments_of_the_same_contacts_enter_each_once(
    committed_client: httpx.AsyncClient, committed: Runtime
) -> None:
    async with unit_of_work(committed.sessionmaker) as session:
        tenant = await make_tenant(session)
        h = bearer(await make_key(session, tenant, "operator"))
        ids = await _contacts(session, tenant, 50)
    cid = await _live(committed_client, h)
    body = {"contact_ids": [str(c) for c in ids]}
    answers = await asyncio.gather(
        *(
            committed_client.post(f"/v1/campaigns/{cid}/enrol", json=body, headers=h)
            for _ in range(8)
        )
    )
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    assert sum(a.json()["enrolled"] for a in answers) == 50
    async with committed.engine.connect() as conn:
        count = await conn.scalar(
            text("SELECT count(*) FROM campaign_enrolments WHERE campaign_id = :c"), {"c": cid}
        )
    assert count == 50
