"""Contacts' lifecycle stages follow `contact.lifecycle_changed` from the tagging service:
the contacts API filters on them; stale changes and changes of unknown, merged or
erased contacts are ignored."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from shared.db import unit_of_work
from shared.events import publish
from shared.runtime import Runtime
from tests.helpers import bearer
from tests.users.support import WeComTenant, contact_event, post, process_all, wecom_tenant

CHANGED = "contact.lifecycle_changed"


@pytest.fixture
async def corp(committed: Runtime) -> WeComTenant:
    return await wecom_tenant(committed)


async def new_contacts(
    runtime: Runtime, client: httpx.AsyncClient, corp: WeComTenant, *phones: str
) -> list[str]:
    events = [
        {
            "event_id": f"seed-{phone}",
            "type": "checkin",
            "occurred_at": "2026-11-20T10:00:00+08:00",
            "contact": {"phone": phone},
            "properties": {},
        }
        for phone in phones
    ]
    assert (await post(client, corp.signed({"events": events}))).status_code == 202
    await process_all(runtime)
    async with runtime.engine.connect() as conn:
        found = dict(
            (
                await conn.execute(
                    text("SELECT source_event_id, contact_id::text FROM contact_events")
                )
            ).all()
        )
    return [found[f"seed-{phone}"] for phone in phones]


def change(contact_id: str, to: str, since: str, from_: str = "potential") -> dict[str, Any]:
    return {"contact_id": contact_id, "from": from_, "to": to, "since": since, "reason": "test"}


async def send(runtime: Runtime, tenant_id: uuid.UUID, *changes: dict[str, Any]) -> None:
    """Publish the changes (one transaction: one batch for the users handler) and apply them."""
    async with unit_of_work(runtime.sessionmaker) as session:
        for payload in changes:
            await publish(session, CHANGED, payload, tenant_id=tenant_id)
    await process_all(runtime)


async def stages(client: httpx.AsyncClient, corp: WeComTenant, stage: str) -> set[str]:
    response = await client.get(
        "/v1/contacts", params={"lifecycle_stage": stage}, headers=bearer(corp.admin)
    )
    assert response.status_code == 200, response.text
    return {item["id"] for item in response.json()["items"]}


async def test_the_contacts_api_follows_lifecycle_changes(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant
) -> None:
    a, b = await new_contacts(committed, committed_client, corp, "13812345001", "13812345002")
    assert await stages(committed_client, corp, "potential") == {a, b}
    await send(
        committed,
        corp.tenant_id,
        change(a, "new", "2026-11-21T10:00:00+08:00"),
        # Two changes of one contact in a batch, out of order: the later one holds.
        change(b, "active", "2026-11-23T10:00:00+08:00", "new"),
        change(b, "new", "2026-11-21T10:00:00+08:00"),
    )
    assert await stages(committed_client, corp, "new") == {a}
    assert await stages(committed_client, corp, "active") == {b}
    assert await stages(committed_client, corp, "potential") == set()
    # A stale change (older than the stage on record) is ignored; a newer one is not.
    await send(committed, corp.tenant_id, change(b, "silent", "2026-11-22T10:00:00+08:00"))
    assert await stages(committed_client, corp, "active") == {b}
    await send(committed, corp.tenant_id, change(b, "silent", "2026-12-25T10:00:00+08:00"))
    assert await stages(committed_client, corp, "silent") == {b}


async def test_unknown_merged_erased_and_other_tenants_contacts_are_left_alone(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant
) -> None:
    a, b, c = await new_contacts(
        committed, committed_client, corp, "13812345003", "13812345004", "13812345005"
    )
    erased = await committed_client.delete(f"/v1/contacts/{c}", headers=bearer(corp.admin))
    assert erased.status_code == 200, erased.text
    async with committed.engine.begin() as conn:
        await conn.execute(
            text("UPDATE contacts SET merged_into_id = :a WHERE id = :b"), {"a": a, "b": b}
        )
    other = await wecom_tenant(committed)
    since = "2026-11-21T10:00:00+08:00"
    await send(committed, corp.tenant_id, change(b, "active", since), change(c, "active", since))
    await send(committed, corp.tenant_id, change(str(uuid.uuid4()), "active", since))
    await send(committed, other.tenant_id, change(a, "active", since))
    # Not a stage: logged and ignored, the rest of the batch applies.
    await send(
        committed,
        corp.tenant_id,
        change(a, "legendary", since),
        {"contact_id": a, "to": "new"},
        change(a, "new", since),
    )
    async with committed.engine.connect() as conn:
        rows = dict(
            (await conn.execute(text("SELECT id::text, lifecycle_stage FROM contacts"))).all()
        )
        dead = await conn.scalar(text("SELECT count(*) FROM dead_letters"))
    assert (rows[a], rows[b], rows[c]) == ("new", "potential", "potential")
    assert dead == 0


async def test_a_contact_that_deletes_its_staff_is_churned_until_a_newer_stage(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant
) -> None:
    at = 1764000000  # 2025-11-24T16:00:00Z
    for xml in (
        contact_event("add_external_contact", external="wmL1", at=at - 100),
        contact_event("del_follow_user", external="wmL1", at=at),
    ):
        await post(committed_client, corp.callback(xml))
    await process_all(committed)
    [contact_id] = await stages(committed_client, corp, "churned")
    # Computed before the deletion: stale.
    await send(committed, corp.tenant_id, change(contact_id, "active", "2025-11-24T15:00:00Z"))
    assert await stages(committed_client, corp, "churned") == {contact_id}
    await send(committed, corp.tenant_id, change(contact_id, "active", "2025-11-25T15:00:00Z"))
    assert await stages(committed_client, corp, "active") == {contact_id}
