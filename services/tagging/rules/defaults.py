"""SPEC §2's default tag rules, installed once per tenant.

A tenant gets them (and the groups they need, when it has none of that name) the
first time its rules are listed or created through the API, or the first time the
tagging worker applies one of its events, whichever comes first. Once only: a
default that ops edit stays edited, one they delete stays deleted.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from services.tagging.rules import repository
from services.tagging.rules.repository import GroupSpec
from services.tagging.rules.targets import ensure_tags

INTEREST = GroupSpec("interest", "interest", half_life_days=30.0, floor=1.0)
CONSUMPTION = GroupSpec("consumption", "consumption", half_life_days=None, floor=0.0)
ENGAGEMENT = GroupSpec("engagement", "engagement", half_life_days=None, floor=0.0)
GROUPS = (INTEREST, CONSUMPTION, ENGAGEMENT)


@dataclass(frozen=True)
class DefaultRule:
    key: str
    name: str
    event_type: str
    group: GroupSpec
    weight: float
    cap: float | None
    min_count: int = 1
    window_days: int | None = None
    # A fixed tag of the group by this name, or the tag named after this property.
    tag_name: str | None = None
    from_property: str | None = None


DEFAULT_RULES = (
    DefaultRule(
        "interest_views",
        "Interest: 3 views of a category in 7 days",
        "product.view",
        INTEREST,
        weight=10,
        cap=100,
        min_count=3,
        window_days=7,
        from_property="category",
    ),
    DefaultRule(
        "purchaser",
        "Purchaser: a paid order",
        "order.paid",
        CONSUMPTION,
        20,
        100,
        tag_name="purchaser",
    ),
    DefaultRule("sharer", "Sharer: a share", "share", ENGAGEMENT, 30, 100, tag_name="sharer"),
    DefaultRule(
        "referrer",
        "Referrer: a successful referral (the inviter)",
        "referral.succeeded",
        ENGAGEMENT,
        50,
        100,
        tag_name="referrer",
    ),
)


async def ensure_defaults(session: AsyncSession, tenant_ids: Sequence[uuid.UUID]) -> None:
    """Install the default rules of the tenants that do not have them yet: one
    statement when they all do (the common case), a few for the batch otherwise."""
    if not tenant_ids:
        return
    new = await repository.claim_tenants(session, tenant_ids)
    if not new:
        return
    groups = await repository.ensure_groups(session, new, GROUPS)
    wanted = [
        (tenant_id, groups[(tenant_id, rule.group.name)], rule.tag_name)
        for tenant_id in new
        for rule in DEFAULT_RULES
        if rule.tag_name is not None
    ]
    tags = await ensure_tags(session, wanted)
    rows: list[dict[str, Any]] = []
    for tenant_id in new:
        for rule in DEFAULT_RULES:
            group_id = groups[(tenant_id, rule.group.name)]
            fixed = tags.get((tenant_id, group_id, rule.tag_name or ""))
            if rule.tag_name is not None and fixed is None:
                continue  # the tenant has as many tags as it may
            rows.append(
                {
                    "tenant_id": tenant_id,
                    "name": rule.name,
                    "event_type": rule.event_type,
                    "min_count": rule.min_count,
                    "window_days": rule.window_days,
                    "weight": rule.weight,
                    "cap": rule.cap,
                    "tag_id": fixed,
                    "group_id": None if fixed is not None else group_id,
                    "from_property": rule.from_property,
                    "default_key": rule.key,
                }
            )
    await repository.insert_default_rules(session, rows)
