"""Triggers: the events that enrol contacts in live journeys, set-based per batch.

Each journey's trigger (journeys/definition.py) is matched against a batch's events
of its tenant: `contact.added` (optionally only some channel codes' `state`),
`group.joined` (optionally some chats), `tag.added` / `tag.removed` (a tag),
`segment.entered` / `segment.left` (a segment) and `event` (a business event type,
with `where` on its properties). The matching contacts enter in one statement per
journey, each event an occurrence of its own (`event:<outbox id>`), so a second
delivery of an event enrols nobody. An event from before the journey went live
(launched or resumed) enrols nobody either. `schedule` and `manual` journeys enter
through the scheduler and ops.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from services.campaigns import clock
from services.campaigns.enrolment import repository
from services.campaigns.enrolment.service import enrol
from services.campaigns.journeys import repository as journeys
from services.campaigns.journeys.definition import event_triggers
from shared.events import Event, subscribe_many

DEDICATED = (
    "contact.added",
    "group.joined",
    "tag.added",
    "tag.removed",
    "segment.entered",
    "segment.left",
)
CONSUMED = (*DEDICATED, *event_triggers(), "custom.*")


def trigger_type(event: Event) -> str:
    return event.type if event.type in DEDICATED else "event"


def matches(trigger: dict[str, Any], event: Event) -> bool:
    """Whether the event is an occurrence of the trigger (of its type already)."""
    payload = event.payload
    kind = trigger["type"]
    if kind == "contact.added":
        return "states" not in trigger or payload.get("state") in trigger["states"]
    if kind == "group.joined":
        return "chat_ids" not in trigger or payload.get("chat_id") in trigger["chat_ids"]
    if kind in ("tag.added", "tag.removed"):
        return bool(payload.get("tag_id") == trigger["tag_id"])
    if kind in ("segment.entered", "segment.left"):
        return bool(payload.get("segment_id") == trigger["segment_id"])
    if kind == "event":
        return event.type == trigger["event_type"] and where_holds(trigger.get("where"), payload)
    return False


def where_holds(where: dict[str, Any] | None, payload: Any) -> bool:
    """A `where` on an event: each key equals the event's property (a business event's
    `properties`) or, failing that, its payload field of that name."""
    if not where:
        return True
    properties = payload.get("properties")
    if not isinstance(properties, dict):
        properties = {}
    for key, wanted in where.items():
        value = properties[key] if key in properties else payload.get(key)
        if value != wanted or (type(value) is bool) != (type(wanted) is bool):
            return False
    return True


def contact_of(event: Event) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(event.payload["contact_id"]))
    except (KeyError, ValueError):
        return None


def context_of(event: Event) -> dict[str, Any]:
    """What later steps may use of the trigger event."""
    payload = event.payload
    context: dict[str, Any] = {"event_id": event.id, "event_type": event.type}
    for key in ("welcome_code", "staff_userid", "state", "chat_id"):
        if isinstance(payload.get(key), str):
            context[key] = payload[key]
    if isinstance(payload.get("properties"), dict):
        context["properties"] = payload["properties"]
    return context


# Only events a journey of their tenant was live for when they happened, and that it
# may start on, are delivered to the handler (shared.events.subscribe_many `interest`).
INTEREST = (
    "EXISTS (SELECT 1 FROM campaigns c WHERE c.tenant_id = o.tenant_id "
    "AND c.status = 'live' AND c.live_since <= o.created_at "
    "AND c.trigger_type = CASE WHEN o.type IN ("
    + ", ".join(f"'{t}'" for t in DEDICATED)
    + ") THEN o.type ELSE 'event' END)"
)


@subscribe_many("campaigns", *CONSUMED, name="campaigns.enrol_on_trigger", interest=INTEREST)
async def enrol_on_trigger(session: AsyncSession, events: list[Event]) -> None:
    """Enrol the contacts of a batch's trigger events in the live journeys they trigger."""
    now = clock.now()
    by_tenant: dict[uuid.UUID, list[Event]] = defaultdict(list)
    for event in events:
        if event.tenant_id is not None and contact_of(event) is not None:
            by_tenant[event.tenant_id].append(event)
    for tenant_id, batch in sorted(by_tenant.items()):
        kinds = sorted({trigger_type(e) for e in batch})
        for campaign, definition in await journeys.live_triggered(session, tenant_id, kinds):
            trigger = definition["trigger"]
            since = campaign.live_since
            hits = [
                e
                for e in batch
                if trigger_type(e) == trigger["type"]
                and matches(trigger, e)
                and (since is None or since <= e.created_at)
            ]
            if not hits:
                continue
            contacts = [c for c in (contact_of(e) for e in hits) if c is not None]
            source = repository.paired(
                contacts, [f"event:{e.id}" for e in hits], [context_of(e) for e in hits]
            )
            await enrol(session, campaign, definition, source, now)
