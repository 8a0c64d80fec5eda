"""Claimed batches are applied together (inbound_batch.py) exactly as one row at a time
would apply them: order per contact, news only once, merges, bad rows, races."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from services.users.consumer import InboundConsumer
from services.users.identity import identity_context, lookup_keys
from services.users.ingest import Inbound, InboundWriter
from shared.runtime import Runtime
from tests.clock import wait_until
from tests.users.support import (
    WeComTenant,
    chat_event,
    contact_event,
    post,
    tag_event,
    wecom_tenant,
)

PHONE = "+8613812346001"


def order(event_id: str, **contact: str) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "type": "order.paid",
        "occurred_at": "2026-11-20T10:00:00+08:00",
        "contact": contact,
        "properties": {"order_id": f"SO-{event_id}", "amount_fen": 100},
    }


def consent(event_id: str, type_: str, **contact: str) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "type": type_,
        "occurred_at": "2026-11-20T10:00:00+08:00",
        "contact": contact,
        "properties": {"channel": "sms"},
    }


def callbacks() -> list[str]:
    """Every kind of row, several of one contact in a row, and a group change amid them."""
    return [
        contact_event("add_external_contact", external="wmB1", at=1700000001, State="ch1"),
        contact_event("del_external_contact", external="wmB1", at=1700000002),
        contact_event("add_external_contact", external="wmB2", user="lisi", at=1700000003),
        contact_event("add_external_contact", external="wmB2", user="lisi", at=1700000004),
        contact_event("add_half_external_contact", external="wmB2", at=1700000005),
        contact_event("del_external_contact", external="wmB2", user="lisi", at=1700000006),
        contact_event("add_external_contact", external="wmB3", at=1700000007),
        contact_event("del_follow_user", external="wmB3", at=1700000008),
        contact_event("add_external_contact", external="wmB3", at=1700000009, State="ch3"),
        contact_event("edit_external_contact", external="wmB3", at=1700000010),
        contact_event("transfer_fail", external="wmB3", user="wangwu", at=1700000011),
        chat_event(
            "update",
            at=1700000012,
            UpdateDetail="add_member",
            JoinScene="1",
            MemChangeCnt="2",
            members=["wmB3", "wmB4"],
        ),
        contact_event("add_external_contact", external="wmB4", user="zhaoliu", at=1700000013),
        tag_event("create", at=1700000014),
        contact_event("add_external_contact", user="nobody", external="", at=1700000015),
    ]


def business() -> list[dict[str, Any]]:
    return [
        order("o1", external_userid="wmB1"),
        order("o2", phone=PHONE),
        order("o3", external_userid="wmB2", phone=PHONE),  # proves wmB2 and PHONE one person
        order("o4", phone=PHONE),
        consent("c1", "consent.opt_out", external_userid="wmB3"),
        consent("c2", "consent.opt_in", external_userid="wmB3"),
    ]


async def rows(runtime: Runtime, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    async with runtime.engine.connect() as conn:
        return [tuple(r) for r in await conn.execute(text(sql), params)]


async def what_happened(runtime: Runtime, tenant_id: uuid.UUID) -> dict[str, Any]:
    """Everything applying left behind, with contacts named by their first identifier."""
    names = dict(
        await rows(
            runtime,
            "SELECT c.id, coalesce(min(e.source_event_id), 'none') FROM contacts c "
            "LEFT JOIN contact_events e ON e.contact_id = c.id "
            "WHERE c.tenant_id = :t GROUP BY c.id",
            t=tenant_id,
        )
    )

    def named(payload: dict[str, Any]) -> dict[str, Any]:
        return {
            k: names.get(uuid.UUID(v), v) if k in ("contact_id", "survivor_id", "merged_id") else v
            for k, v in payload.items()
            if k not in ("created_at",)
        }

    outbox = await rows(
        runtime,
        "SELECT type, payload FROM outbox_events WHERE tenant_id = :t AND type NOT IN "
        "('tenant.created', 'contact.profile_changed') ORDER BY id",
        t=tenant_id,
    )
    profiles = await rows(
        runtime,
        "SELECT payload FROM outbox_events WHERE tenant_id = :t "
        "AND type = 'contact.profile_changed' ORDER BY id",
        t=tenant_id,
    )
    last_profile = {}
    for (payload,) in profiles:
        last_profile[names.get(uuid.UUID(payload["contact_id"]))] = named(payload)
    return {
        "outcomes": await rows(
            runtime,
            "SELECT outcome, contact_id IS NOT NULL FROM inbound_events "
            "WHERE tenant_id = :t ORDER BY id",
            t=tenant_id,
        ),
        "outbox": [(kind, named(payload)) for kind, payload in outbox],
        "profiles": last_profile,
        "follows": sorted(
            (names[c], s, status, state, welcome is not None, added is not None, gone is not None)
            for c, s, status, state, welcome, added, gone in await rows(
                runtime,
                "SELECT contact_id, staff_userid, status, state, welcome_code, added_at, "
                "removed_at FROM contact_follows WHERE tenant_id = :t",
                t=tenant_id,
            )
        ),
        "contacts": sorted(
            (names[c], owner, channel, stage, merged is not None)
            for c, owner, channel, stage, merged in await rows(
                runtime,
                "SELECT id, owner_staff_userid, channel_state, lifecycle_stage, merged_into_id "
                "FROM contacts WHERE tenant_id = :t",
                t=tenant_id,
            )
        ),
        "timeline": sorted(
            (names[c], kind, source_event_id[:12])
            for c, kind, source_event_id in await rows(
                runtime,
                "SELECT contact_id, type, source_event_id FROM contact_events WHERE tenant_id = :t",
                t=tenant_id,
            )
        ),
        "consent": await rows(
            runtime,
            "SELECT channel, status, source FROM consent_changes WHERE tenant_id = :t ORDER BY id",
            t=tenant_id,
        ),
        "staff": await rows(
            runtime, "SELECT userid FROM staff WHERE tenant_id = :t ORDER BY userid", t=tenant_id
        ),
        "groups": await rows(
            runtime,
            "SELECT member_id, contact_id IS NOT NULL FROM group_members WHERE tenant_id = :t "
            "ORDER BY member_id",
            t=tenant_id,
        ),
        "merges": len(
            await rows(runtime, "SELECT 1 FROM contact_merges WHERE tenant_id = :t", t=tenant_id)
        ),
    }


async def send_everything(client: httpx.AsyncClient, corp: WeComTenant) -> None:
    events = business()
    for xml in callbacks()[:7]:
        assert (await post(client, corp.callback(xml))).text == "success"
    assert (await post(client, corp.signed({"events": events[:4]}))).status_code == 202
    for xml in callbacks()[7:]:
        assert (await post(client, corp.callback(xml))).text == "success"
    assert (await post(client, corp.signed({"events": events[4:]}))).status_code == 202


async def test_a_batch_applies_as_one_row_at_a_time_does(
    committed: Runtime, committed_client: httpx.AsyncClient
) -> None:
    together, alone = await wecom_tenant(committed), await wecom_tenant(committed)
    await send_everything(committed_client, together)
    assert await InboundConsumer(committed, batch_size=100).step() == 21, "in one batch"
    await send_everything(committed_client, alone)
    one_at_a_time = InboundConsumer(committed, batch_size=1)
    assert await one_at_a_time.drain() == 21
    batched = await what_happened(committed, together.tenant_id)
    single = await what_happened(committed, alone.tenant_id)
    for part in batched:
        assert batched[part] == single[part], part
    # And what that is: order per contact held within the batch.
    assert sorted((f[1], f[2]) for f in batched["follows"]) == [
        ("lisi", "deleted_by_staff"),
        ("zhangsan", "active"),  # wmB3 deleted zhangsan, then was added again
        ("zhangsan", "deleted_by_staff"),
        ("zhangsan", "half"),
        ("zhaoliu", "active"),
    ]
    kinds = [kind for kind, _ in batched["outbox"]]
    assert kinds.count("contact.added") == 5, "wmB2's second add by lisi is no news"
    assert kinds.count("contact.lost") == 2, "wmB1 deleted by its staff, wmB3 deleted its staff"
    assert batched["merges"] == 1
    assert [c[1] for c in batched["consent"]] == ["opted_out", "opted_in"]
    assert ("add_external_contact:no_contact", False) in batched["outcomes"]
    assert sorted(s for (s,) in batched["staff"]) == [
        "lisi",
        "nobody",
        "wangwu",
        "zhangsan",
        "zhaoliu",
    ]


async def test_an_add_then_a_deletion_in_one_batch_ends_deleted(
    committed: Runtime, committed_client: httpx.AsyncClient
) -> None:
    corp = await wecom_tenant(committed)
    for xml in (
        contact_event("add_external_contact", external="wmD1", at=1700000001),
        contact_event("del_external_contact", external="wmD1", at=1700000002),
        contact_event("add_external_contact", external="wmD2", at=1700000003),
        contact_event("del_follow_user", external="wmD2", at=1700000004),
    ):
        await post(committed_client, corp.callback(xml))
    assert await InboundConsumer(committed, batch_size=100).step() == 4
    assert sorted(
        await rows(
            committed,
            "SELECT f.status, c.lifecycle_stage FROM contact_follows f "
            "JOIN contacts c ON c.id = f.contact_id",
        )
    ) == [("deleted_by_contact", "churned"), ("deleted_by_staff", "potential")]
    kinds = [
        k
        for (k,) in await rows(
            committed,
            "SELECT type FROM outbox_events WHERE type LIKE 'contact.%' "
            "AND type <> 'contact.profile_changed' ORDER BY id",
        )
    ]
    assert kinds == [
        "contact.added",
        "contact.removed_by_staff",
        "contact.lost",
        "contact.added",
        "contact.lost",
    ]


async def test_a_bad_row_is_a_dead_letter_alone_and_the_rest_of_its_batch_applies(
    committed: Runtime, committed_client: httpx.AsyncClient
) -> None:
    corp = await wecom_tenant(committed)
    bad = {**order("bad", phone="139-0000-000"), "via": "webhook"}  # stored unchecked
    writer = InboundWriter(committed)
    try:
        await writer.store(
            [
                Inbound(
                    corp.tenant_id, "event", f"ok{i}", "order.paid", order(f"ok{i}", phone=PHONE)
                )
                for i in range(3)
            ]
            + [Inbound(corp.tenant_id, "event", "bad", "order.paid", bad)]
            + [
                Inbound(
                    corp.tenant_id, "event", f"ok{i}", "order.paid", order(f"ok{i}", phone=PHONE)
                )
                for i in range(3, 6)
            ]
        )
    finally:
        await writer.close()
    assert await InboundConsumer(committed, batch_size=100).drain() == 7
    assert await rows(committed, "SELECT count(*) FROM contact_events") == [(6,)]
    assert await rows(
        committed, "SELECT count(*) FROM outbox_events WHERE type = 'order.paid'"
    ) == [(6,)]
    assert await rows(
        committed,
        "SELECT i.dedupe_key FROM dead_letters d JOIN inbound_events i "
        "ON i.id = d.inbound_event_id",
    ) == [("bad",)]


async def test_an_identifier_another_writer_attaches_meanwhile_is_settled_one_by_one(
    committed: Runtime, committed_client: httpx.AsyncClient
) -> None:
    """The batch looks the phone up, finds no one, and meets a transaction that is
    attaching it to another contact: its rows then go one by one, and the event lands
    on that contact, with no merge and no failure."""
    corp = await wecom_tenant(committed)
    response = await post(
        committed_client,
        corp.signed({"events": [order("r1", phone=PHONE), order("r2", phone=PHONE)]}),
    )
    assert response.status_code == 202
    cipher = committed.cipher
    other = uuid.uuid4()
    async with committed.engine.connect() as writer:
        await writer.execute(
            text("INSERT INTO contacts (id, tenant_id) VALUES (:c, :t)"),
            {"c": other, "t": corp.tenant_id},
        )
        await writer.execute(
            text(
                "INSERT INTO contact_identities (tenant_id, contact_id, kind, value_bidx, "
                "value_enc, source) VALUES (:t, :c, 'phone', :b, :v, 'test')"
            ),
            {
                "t": corp.tenant_id,
                "c": other,
                "b": lookup_keys(cipher, corp.tenant_id, "phone", PHONE)[0],
                "v": cipher.encrypt(PHONE, context=identity_context(corp.tenant_id, "phone")),
            },
        )
        draining = asyncio.create_task(InboundConsumer(committed, batch_size=100).drain())

        async def waiting_for_the_writer() -> bool:
            blocked = await rows(committed, "SELECT count(*) FROM pg_locks WHERE NOT granted")
            return blocked[0][0] > 0

        await wait_until(waiting_for_the_writer, "the batch waits on the other writer's insert")
        await writer.commit()
    assert await asyncio.wait_for(draining, timeout=60) == 2
    assert await rows(committed, "SELECT DISTINCT contact_id FROM contact_events") == [(other,)]
    assert await rows(committed, "SELECT count(*) FROM contacts") == [(1,)]
    assert await rows(committed, "SELECT count(*) FROM contact_merges") == [(0,)]
    assert await rows(committed, "SELECT count(*) FROM inbound_events WHERE attempts > 0") == [(0,)]


@pytest.mark.parametrize("batch_size", [1, 100])
async def test_a_duplicate_business_event_in_a_batch_does_nothing_twice(
    committed: Runtime, batch_size: int
) -> None:
    corp = await wecom_tenant(committed)
    writer = InboundWriter(committed)
    try:
        # The same event id under two dedupe keys (as a replay by an earlier version).
        await writer.store(
            [
                Inbound(corp.tenant_id, "event", key, "order.paid", order("same", phone=PHONE))
                for key in ("k1", "k2")
            ]
        )
    finally:
        await writer.close()
    assert await InboundConsumer(committed, batch_size=batch_size).drain() == 2
    assert await rows(committed, "SELECT outcome FROM inbound_events ORDER BY id") == [
        ("order.paid",),
        ("duplicate",),
    ]
    assert await rows(
        committed, "SELECT count(*) FROM outbox_events WHERE type = 'order.paid'"
    ) == [(1,)]
