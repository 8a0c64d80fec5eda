"""Helpers of the tag-rule tests (no tests here): tenants with tag groups and tags,
recorded events, and the rules engine run on them."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.tagging.facts import Changes
from services.tagging.profile.ingest import AppliedEvent
from services.tagging.rules import engine


async def make_group(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    name: str | None = None,
    *,
    half_life_days: float | None = None,
    floor: float = 0.0,
) -> int:
    group_id: int = await session.scalar(
        text(
            "INSERT INTO tag_groups (tenant_id, name, half_life_days, floor)"
            " VALUES (:t, :n, :h, :f) RETURNING id"
        ),
        {"t": tenant_id, "n": name or f"g-{uuid.uuid4().hex[:8]}", "h": half_life_days, "f": floor},
    )
    return group_id


async def make_tag(
    session: AsyncSession, tenant_id: uuid.UUID, group_id: int, name: str | None = None
) -> int:
    tag_id: int = await session.scalar(
        text("INSERT INTO tags (tenant_id, group_id, name) VALUES (:t, :g, :n) RETURNING id"),
        {"t": tenant_id, "g": group_id, "n": name or f"tag-{uuid.uuid4().hex[:8]}"},
    )
    return tag_id


async def record(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    contact_id: uuid.UUID,
    event_type: str,
    at: datetime,
    properties: dict[str, Any] | None = None,
) -> AppliedEvent:
    """An event as profile.ingest records it (tagging_events), and what it hands on."""
    source = uuid.uuid4()
    props = properties or {}
    await session.execute(
        text(
            "INSERT INTO tagging_events (tenant_id, contact_id, event_type, occurred_at, day,"
            " properties, source_event_id)"
            " VALUES (:t, :c, :e, :at, :day, CAST(:p AS jsonb), :s)"
        ),
        {
            "t": tenant_id,
            "c": contact_id,
            "e": event_type,
            "at": at,
            "day": at.date(),
            "p": json.dumps(props),
            "s": source,
        },
    )
    return AppliedEvent(
        tenant_id=tenant_id,
        contact_id=contact_id,
        event_type=event_type,
        occurred_at=at,
        day=at.date(),
        properties=props,
        source_event_id=source,
    )


async def fire(session: AsyncSession, applied: list[AppliedEvent], now: datetime) -> Changes:
    changes = Changes()
    await engine.apply(session, applied, changes, now)
    return changes


async def weight(
    session: AsyncSession, tenant_id: uuid.UUID, contact_id: uuid.UUID, tag_id: int, at: datetime
) -> float | None:
    """The contact's current weight of the tag at `at` (None: it does not hold it)."""
    found: float | None = await session.scalar(
        text(
            "SELECT tag_weight(weight, weighted_at, half_life_days, :at) FROM contact_tags"
            " WHERE tenant_id = :t AND contact_id = :c AND tag_id = :g"
        ),
        {"t": tenant_id, "c": contact_id, "g": tag_id, "at": at},
    )
    return found


async def firings(session: AsyncSession, rule_id: int) -> list[dict[str, Any]]:
    rows = await session.execute(
        text(
            "SELECT source_event_id, contact_id, tag_id, outcome, reason FROM tag_rule_firings"
            " WHERE rule_id = :r ORDER BY fired_at, source_event_id"
        ),
        {"r": rule_id},
    )
    return [dict(row._mapping) for row in rows]


async def add_rule(session: AsyncSession, tenant_id: uuid.UUID, **fields: Any) -> int:
    """A rule stored as the API would (services.tagging.rules.service), fields as its body."""
    from services.tagging.rules import service
    from services.tagging.rules.schemas import RuleIn

    body = {"name": f"rule-{uuid.uuid4().hex[:8]}", **fields}
    return await service.create_rule(session, tenant_id, RuleIn.model_validate(body))
