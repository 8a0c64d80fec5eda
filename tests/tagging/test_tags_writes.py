"""services.tagging.tags.writes: the set-based write API other parts use."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.tagging.facts import Changes, tag_fact
from services.tagging.tags import service
from services.tagging.tags.writes import TagWrite, apply_tag_writes
from shared.db import unit_of_work
from shared.runtime import Runtime
from tests.clock import wait_until
from tests.helpers import make_tenant

T0 = datetime(2026, 11, 1, tzinfo=UTC)


async def _group(session: AsyncSession, tenant_id: uuid.UUID, **values: Any) -> int:
    values = {
        "name": f"g-{uuid.uuid4().hex[:8]}",
        "half_life_days": None,
        "floor": 0.0,
        "exclusive": False,
        "decay_manual": False,
        **values,
    }
    return int(
        await session.scalar(
            text(
                "INSERT INTO tag_groups (tenant_id, name, half_life_days, floor, exclusive,"
                " decay_manual) VALUES (:t, :name, :half_life_days, :floor, :exclusive,"
                " :decay_manual) RETURNING id"
            ),
            {"t": tenant_id, **values},
        )
    )


async def _tag(session: AsyncSession, tenant_id: uuid.UUID, group_id: int) -> int:
    return int(
        await session.scalar(
            text("INSERT INTO tags (tenant_id, group_id, name) VALUES (:t, :g, :n) RETURNING id"),
            {"t": tenant_id, "g": group_id, "n": f"tag-{uuid.uuid4().hex[:8]}"},
        )
    )


async def _weights(session: AsyncSession, tenant_id: uuid.UUID, at: datetime) -> dict[Any, float]:
    rows = await session.execute(
        text(
            "SELECT contact_id, tag_id, tag_weight(weight, weighted_at, half_life_days, :at) w"
            " FROM contact_tags WHERE tenant_id = :t"
        ),
        {"t": tenant_id, "at": at},
    )
    return {(r.contact_id, r.tag_id): r.w for r in rows}


async def _events(session: AsyncSession, tenant_id: uuid.UUID) -> list[tuple[str, dict[str, Any]]]:
    rows = await session.execute(
        text(
            "SELECT type, payload FROM outbox_events"
            " WHERE tenant_id = :t AND type LIKE 'tag.%' ORDER BY id"
        ),
        {"t": tenant_id},
    )
    return [(r.type, r.payload) for r in rows]


async def test_raise_with_cap_and_several_writes_combining_in_order(session: AsyncSession) -> None:
    tenant = await make_tenant(session)
    group = await _group(session, tenant.id, half_life_days=30.0, floor=1.0)
    tag = await _tag(session, tenant.id, group)
    contact = uuid.uuid4()
    changes = Changes()
    writes = [TagWrite(contact, tag, "raise", 10, cap=25, source="rule", cause={"rule_id": 1})] * 3
    result = await apply_tag_writes(session, tenant.id, writes, changes, T0)
    assert (result.added, result.updated) == (1, 0)
    assert await _weights(session, tenant.id, T0) == {(contact, tag): 25}
    assert changes.contacts(tenant.id) == {contact: {tag_fact(tag)}}
    events = await _events(session, tenant.id)
    assert [t for t, _ in events] == ["tag.added"]
    assert events[0][1]["weight"] == 25 and events[0][1]["source"] == "rule"

    # 30 days later the weight is half: a raise applies to the decayed weight.
    later = T0 + timedelta(days=30)
    result = await apply_tag_writes(
        session, tenant.id, [TagWrite(contact, tag, "raise", 5, source="rule")], Changes(), later
    )
    assert result.updated == 1
    assert await _weights(session, tenant.id, later) == {(contact, tag): pytest.approx(17.5)}
    events = await _events(session, tenant.id)
    assert events[-1][0] == "tag.weight_changed"
    assert events[-1][1]["from"] == pytest.approx(12.5) and events[-1][1]["to"] == 17.5
    history = (
        await session.execute(
            text(
                "SELECT action, weight, cause FROM contact_tag_history"
                " WHERE tenant_id = :t ORDER BY id"
            ),
            {"t": tenant.id},
        )
    ).all()
    assert [h.action for h in history] == ["added", "raised", "raised", "raised"]
    assert [h.weight for h in history] == [10, 20, 25, pytest.approx(17.5)]
    assert history[0].cause == {"rule_id": 1}


async def test_set_then_remove_in_one_call_and_exclusive_groups(session: AsyncSession) -> None:
    tenant = await make_tenant(session)
    group = await _group(session, tenant.id, exclusive=True)
    a, b = await _tag(session, tenant.id, group), await _tag(session, tenant.id, group)
    contact = uuid.uuid4()
    await apply_tag_writes(session, tenant.id, [TagWrite(contact, a, "set", 3)], Changes(), T0)
    changes = Changes()
    result = await apply_tag_writes(
        session, tenant.id, [TagWrite(contact, b, "set", 4)], changes, T0
    )
    assert (result.added, result.removed) == (1, 1)
    assert await _weights(session, tenant.id, T0) == {(contact, b): 4}
    assert changes.contacts(tenant.id) == {contact: {tag_fact(a), tag_fact(b)}}
    removed = [p for t, p in await _events(session, tenant.id) if t == "tag.removed"]
    assert removed == [
        {
            "contact_id": str(contact),
            "tag_id": a,
            "group_id": group,
            "reason": "exclusive",
            "occurred_at": T0.isoformat(),
        }
    ]
    # Repeating a write changes nothing and publishes nothing.
    before = len(await _events(session, tenant.id))
    result = await apply_tag_writes(
        session, tenant.id, [TagWrite(contact, b, "set", 4)], Changes(), T0
    )
    assert (result.unchanged, result.updated, result.added) == (1, 0, 0)
    assert len(await _events(session, tenant.id)) == before
    result = await apply_tag_writes(
        session,
        tenant.id,
        [TagWrite(contact, b, "set", 9), TagWrite(contact, b, "remove")],
        Changes(),
        T0,
    )
    assert result.removed == 1
    assert await _weights(session, tenant.id, T0) == {}
    assert (await _events(session, tenant.id))[-1][1]["reason"] == "manual"


async def test_unknown_tags_are_skipped(session: AsyncSession) -> None:
    tenant = await make_tenant(session)
    other = await make_tenant(session)
    foreign = await _tag(session, other.id, await _group(session, other.id))
    result = await apply_tag_writes(
        session, tenant.id, [TagWrite(uuid.uuid4(), foreign, "set", 1)], Changes(), T0
    )
    assert result.skipped == 1 and result.added == 0


async def _waiting_on_a_lock(runtime: Runtime) -> bool:
    async with runtime.engine.connect() as conn:
        found = await conn.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )
    return bool(found)


async def test_concurrent_raises_of_a_new_tag_both_count(committed: Runtime) -> None:
    async with unit_of_work(committed.sessionmaker) as session:
        tenant = await make_tenant(session)
        tag = await _tag(session, tenant.id, await _group(session, tenant.id))
    contact = uuid.uuid4()
    raise_10 = [TagWrite(contact, tag, "raise", 10, source="rule")]

    async with unit_of_work(committed.sessionmaker) as first:
        await apply_tag_writes(first, tenant.id, raise_10, Changes(), T0)

        async def second() -> None:
            async with unit_of_work(committed.sessionmaker) as session:
                await apply_tag_writes(session, tenant.id, raise_10, Changes(), T0)

        other = asyncio.create_task(second())
        # The second one inserts the same new row and waits for the first to commit.
        await wait_until(lambda: _waiting_on_a_lock(committed), "the second writer waits")
    await other
    async with unit_of_work(committed.sessionmaker) as session:
        assert await _weights(session, tenant.id, T0) == {(contact, tag): 20}
        kinds = [t for t, _ in await _events(session, tenant.id)]
        assert kinds == ["tag.added", "tag.weight_changed"]


async def test_concurrent_sweeps_drop_each_tag_once(committed: Runtime) -> None:
    async with unit_of_work(committed.sessionmaker) as session:
        tenant = await make_tenant(session)
        tag = await _tag(
            session, tenant.id, await _group(session, tenant.id, half_life_days=1.0, floor=5.0)
        )
        writes = [TagWrite(uuid.uuid4(), tag, "set", 10, source="rule") for _ in range(300)]
        await apply_tag_writes(session, tenant.id, writes, Changes(), T0)

    async def sweep() -> int:
        async with unit_of_work(committed.sessionmaker) as session:
            return await service.sweep_decayed(session, T0 + timedelta(days=2), batch=50, rounds=10)

    counts = await asyncio.gather(*(sweep() for _ in range(3)))
    assert sum(counts) == 300
    async with unit_of_work(committed.sessionmaker) as session:
        removed = [p for t, p in await _events(session, tenant.id) if t == "tag.removed"]
        assert len(removed) == 300 and len({p["contact_id"] for p in removed}) == 300


async def test_deleting_a_tag_waits_for_its_writers_and_removes_what_they_wrote(
    committed: Runtime,
) -> None:
    async with unit_of_work(committed.sessionmaker) as session:
        tenant = await make_tenant(session)
        tag = await _tag(session, tenant.id, await _group(session, tenant.id))
    contact = uuid.uuid4()

    async with unit_of_work(committed.sessionmaker) as writer:
        await apply_tag_writes(writer, tenant.id, [TagWrite(contact, tag, "set", 2)], Changes(), T0)

        async def delete() -> None:
            async with unit_of_work(committed.sessionmaker) as session:
                await service.delete_tag(session, tenant.id, tag)

        deleting = asyncio.create_task(delete())
        await wait_until(lambda: _waiting_on_a_lock(committed), "the delete waits for the writer")
    await deleting
    async with unit_of_work(committed.sessionmaker) as session:
        assert await _weights(session, tenant.id, T0) == {}
        kinds = [(t, p.get("reason")) for t, p in await _events(session, tenant.id)]
        assert kinds == [("tag.added", None), ("tag.removed", "deleted")]
