"""Business rules of tag rules: what a valid rule is, its lifecycle, its dry-run."""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from services.tagging import clock
from services.tagging.rules import repository
from services.tagging.rules.defaults import ensure_defaults
from services.tagging.rules.exceptions import RuleNameTaken, TagRuleNotFound, UnknownRuleTarget
from services.tagging.rules.repository import RuleRow
from services.tagging.rules.schemas import (
    DRY_RUN_SAMPLE,
    MAX_TAG_NAME,
    DryRun,
    FixedTag,
    RuleIn,
    RuleOut,
    RulePatch,
)
from services.users.event_types import is_known_type
from shared.errors import InvalidInput

# Events a rule may name besides the business ones and custom.*: the referral's
# inviter is the contact it tags.
CONTACT_EVENT_TYPES = ("referral.succeeded",)


def _field_error(loc: list[str], message: str, kind: str) -> InvalidInput:
    return InvalidInput(message, details=[{"loc": loc, "message": message, "type": kind}])


async def _check(session: AsyncSession, tenant_id: uuid.UUID, rule: RuleIn) -> None:
    """What the schema cannot know: the event type is one scrm has, the tag or group is
    the tenant's; and what depends on several fields."""
    if rule.min_count > 1 and rule.window_days is None:
        raise _field_error(
            ["body", "window_days"],
            "min_count above 1 needs window_days (the events are counted in it)",
            "window_needed",
        )
    if rule.action == "set" and rule.cap is not None:
        raise _field_error(
            ["body", "cap"], "cap applies to raise only (set stores weight as it is)", "cap_on_set"
        )
    if not (is_known_type(rule.event_type) or rule.event_type in CONTACT_EVENT_TYPES):
        raise _field_error(
            ["body", "event_type"],
            f"unknown event type {rule.event_type!r}: a business event type, "
            "referral.succeeded or custom.<name>",
            "unknown_event_type",
        )
    target = rule.target
    if isinstance(target, FixedTag):
        if not await repository.tag_exists(session, tenant_id, target.tag_id):
            raise UnknownRuleTarget("tag_id", target.tag_id)
    elif not await repository.group_exists(session, tenant_id, target.group_id):
        raise UnknownRuleTarget("group_id", target.group_id)


def _columns(rule: RuleIn) -> dict[str, Any]:
    target = rule.target
    return {
        "name": rule.name,
        "event_type": rule.event_type,
        "where": rule.where,
        "min_count": rule.min_count,
        "window_days": rule.window_days,
        "action": rule.action,
        "weight": rule.weight,
        "cap": rule.cap,
        "tag_id": target.tag_id if isinstance(target, FixedTag) else None,
        "group_id": None if isinstance(target, FixedTag) else target.group_id,
        "from_property": None if isinstance(target, FixedTag) else target.from_property,
        "status": rule.status,
    }


def rule_in(row: RuleRow) -> RuleIn:
    """A stored rule as the body that would create it."""
    target: dict[str, Any] = (
        {"tag_id": row.tag_id}
        if row.tag_id is not None
        else {"group_id": row.group_id, "from_property": row.from_property}
    )
    return RuleIn.model_validate(
        {
            "name": row.name,
            "event_type": row.event_type,
            "where": row.where,
            "min_count": row.min_count,
            "window_days": row.window_days,
            "action": row.action,
            "weight": row.weight,
            "cap": row.cap,
            "target": target,
            "status": row.status,
        }
    )


def rule_out(row: RuleRow) -> RuleOut:
    target: dict[str, Any] = (
        {"tag_id": row.tag_id}
        if row.tag_id is not None
        else {"group_id": row.group_id, "from_property": row.from_property}
    )
    return RuleOut(
        id=row.id,
        name=row.name,
        event_type=row.event_type,
        where=row.where,
        min_count=row.min_count,
        window_days=row.window_days,
        action="set" if row.action == "set" else "raise",
        weight=row.weight,
        cap=row.cap,
        target=target,
        status="paused" if row.status == "paused" else "active",
        default_key=row.default_key,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


async def create_rule(session: AsyncSession, tenant_id: uuid.UUID, rule: RuleIn) -> int:
    """A new rule; 409 `rule_name_taken` when the tenant has one of this name."""
    await ensure_defaults(session, [tenant_id])
    await _check(session, tenant_id, rule)
    rule_id = await repository.insert_rule(session, tenant_id, _columns(rule))
    if rule_id is None:
        raise RuleNameTaken(rule.name)
    return rule_id


async def list_rules(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    *,
    status: str | None,
    event_type: str | None,
    cursor: int | None,
    limit: int,
) -> tuple[list[RuleRow], str | None]:
    """The tenant's rules by id (its defaults installed first, once)."""
    await ensure_defaults(session, [tenant_id])
    rows = await repository.rules_page(
        session, tenant_id, status=status, event_type=event_type, after=cursor, limit=limit + 1
    )
    next_cursor = str(rows[limit - 1].id) if len(rows) > limit else None
    return rows[:limit], next_cursor


async def get_rule(session: AsyncSession, tenant_id: uuid.UUID, rule_id: int) -> RuleRow:
    found = await repository.rule(session, tenant_id, rule_id)
    if found is None:
        raise TagRuleNotFound(rule_id)
    return found


async def update_rule(
    session: AsyncSession, tenant_id: uuid.UUID, rule_id: int, patch: RulePatch
) -> RuleRow:
    """The rule with the patch applied, checked as a whole (422 naming the field)."""
    current = await repository.rule(session, tenant_id, rule_id, lock=True)
    if current is None:
        raise TagRuleNotFound(rule_id)
    try:
        merged = RuleIn.model_validate(patch.apply_to(rule_in(current)))
    except ValidationError as exc:
        raise InvalidInput(
            "the rule would not be valid with these changes",
            details=[
                {
                    "loc": ["body", *(str(p) for p in e["loc"])],
                    "message": e["msg"],
                    "type": e["type"],
                }
                for e in exc.errors()
            ],
        ) from None
    await _check(session, tenant_id, merged)
    stored = await repository.update_rule(
        session, tenant_id, rule_id, _columns(merged), clock.now()
    )
    if stored is False:
        raise RuleNameTaken(merged.name)
    return await get_rule(session, tenant_id, rule_id)


async def set_status(
    session: AsyncSession, tenant_id: uuid.UUID, rule_id: int, status: str
) -> RuleRow:
    """Pause (it fires on nothing until resumed: events meanwhile are not fired later)
    or resume a rule."""
    if not await repository.set_status(session, tenant_id, rule_id, status, clock.now()):
        raise TagRuleNotFound(rule_id)
    return await get_rule(session, tenant_id, rule_id)


async def delete_rule(session: AsyncSession, tenant_id: uuid.UUID, rule_id: int) -> None:
    """Delete a rule (the tags it raised stay; its record of firings goes)."""
    if not await repository.delete_rule(session, tenant_id, rule_id):
        raise TagRuleNotFound(rule_id)


async def list_firings(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    rule_id: int,
    *,
    outcome: str | None,
    cursor: int | None,
    limit: int,
) -> tuple[list[dict[str, Any]], str | None]:
    """What the rule fired on (or skipped), oldest first."""
    await get_rule(session, tenant_id, rule_id)
    rows = await repository.firings_page(
        session, tenant_id, rule_id, outcome=outcome, after=cursor, limit=limit + 1
    )
    next_cursor = str(rows[limit - 1]["id"]) if len(rows) > limit else None
    return rows[:limit], next_cursor


async def dry_run(session: AsyncSession, tenant_id: uuid.UUID, rule: RuleIn) -> DryRun:
    """How many live contacts the rule would tag now, and some of them."""
    await _check(session, tenant_id, rule)
    target = rule.target
    contacts, sample = await repository.would_tag(
        session,
        tenant_id,
        event_type=rule.event_type,
        where=rule.where,
        min_count=rule.min_count,
        window_days=rule.window_days,
        from_property=None if isinstance(target, FixedTag) else target.from_property,
        max_name=MAX_TAG_NAME,
        now=clock.now(),
        sample=DRY_RUN_SAMPLE,
    )
    return DryRun(contacts=contacts, sample=sample)


async def dry_run_saved(session: AsyncSession, tenant_id: uuid.UUID, rule_id: int) -> DryRun:
    return await dry_run(session, tenant_id, rule_in(await get_rule(session, tenant_id, rule_id)))
