"""What happens to contacts already in journeys: goals, wait_for events, and the
contact leaving (merged, erased, lost, opted out).

- **Goals.** An event of a journey's goals (`goals: [{"event": "order.paid", "where":
  {...}}]`) ends the contact's enrolment wherever it is, as a conversion
  (`converted`, `goal:<type>`), when it happened after the contact entered.
- **wait_for.** The event a contact waits for (with its `where`), happening after it
  reached the step, moves it on to `on_event` at once (the runner is woken).
- **Merged** contacts' enrolments follow the survivor, once: where the survivor is in
  the same journey already (or has the same occurrence), the merged contact's
  enrolment ends (`merged`). **Erased** contacts leave every journey (`erased`).
  **Lost** contacts (no staff member follows them any more) leave the journeys whose
  `when_lost` is `exit` (`lost`). A contact who **opts out** of all channels, or of a
  channel a journey sends on, leaves the journeys whose `when_opted_out` is `exit`
  (`opted_out`); under `skip` (the default) the sends on that channel are skipped.

Both handlers are set-based and have an `interest`: only events of contacts with an
enrolment listening for them (or in any journey, for the contact changes) are
delivered, so the stream of events about contacts in no journey costs one index
probe per event in the relay.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.campaigns import clock
from services.campaigns.enrolment.service import goal_events
from services.campaigns.enrolment.triggers import contact_of, where_holds
from services.campaigns.journeys.definition import CHANNELS
from services.campaigns.runner.wake import notify
from shared.catalog import catalog
from shared.events import Event, subscribe_many

_UUID = "'^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$'"


def _uuid_of(key: str) -> str:
    # A payload field as a uuid, or NULL when it is not one (never a failing cast).
    return f"(CASE WHEN o.payload->>'{key}' ~ {_UUID} THEN CAST(o.payload->>'{key}' AS uuid) END)"


def listened_types() -> tuple[str, ...]:
    """The event types a goal or a wait_for may name: every domain type of the event
    catalog but this service's own."""
    named = sorted(
        t.name for t in catalog().domain() if t.service != "campaigns" and "*" not in t.name
    )
    return (*named, "custom.*")


LISTENING = (
    "EXISTS (SELECT 1 FROM campaign_enrolments e WHERE e.tenant_id = o.tenant_id "
    f"AND e.contact_id = {_uuid_of('contact_id')} "
    "AND e.status IN ('active', 'waiting') AND o.type = ANY(e.listens) "
    "AND e.entered_at <= o.created_at)"
)

_LISTENERS = text(
    """
    SELECT e.id, e.campaign_id, e.version, e.contact_id, e.status, e.step_id, e.seq,
           e.entered_at, e.step_since, v.definition
      FROM campaign_enrolments e
      JOIN campaign_versions v ON v.campaign_id = e.campaign_id AND v.version = e.version
     WHERE e.tenant_id = :tenant AND e.contact_id = ANY(CAST(:contacts AS uuid[]))
       AND e.status IN ('active', 'waiting') AND e.listens && CAST(:types AS text[])
     ORDER BY e.id
       FOR UPDATE OF e
    """
)

_CONVERT = text(
    """
    UPDATE campaign_enrolments
       SET status = 'converted', end_reason = :reason, ended_at = :now, listens = '{}'
     WHERE id = :id
    """
)

_MOVE_ON = text(
    """
    UPDATE campaign_enrolments
       SET status = :status, step_id = :step, seq = seq + 1, due_at = :now, step_since = :now,
           listens = CAST(:listens AS text[]), ended_at = :ended, end_reason = :reason
     WHERE id = :id
    """
)


@subscribe_many("campaigns", *listened_types(), name="campaigns.journey_events", interest=LISTENING)
async def journey_events(session: AsyncSession, events: list[Event]) -> None:
    """Goals and wait_for events of the contacts in journeys."""
    now = clock.now()
    by_tenant: dict[uuid.UUID, list[Event]] = defaultdict(list)
    for event in events:
        if event.tenant_id is not None and contact_of(event) is not None:
            by_tenant[event.tenant_id].append(event)
    woke = False
    for tenant_id, batch in sorted(by_tenant.items()):
        by_contact: dict[uuid.UUID, list[Event]] = defaultdict(list)
        for event in batch:
            contact = contact_of(event)
            assert contact is not None
            by_contact[contact].append(event)
        rows = await session.execute(
            _LISTENERS,
            {
                "tenant": tenant_id,
                "contacts": sorted(by_contact),
                "types": sorted({e.type for e in batch}),
            },
        )
        for row in rows.all():
            woke |= await _hear(session, row, by_contact[row.contact_id], now)
    if woke:
        await notify(session)


async def _hear(session: AsyncSession, row: Any, events: list[Event], now: datetime) -> bool:
    """Apply a contact's events to one of its enrolments; whether the runner should run."""
    definition = row.definition
    step = next((s for s in definition["steps"] if s["id"] == row.step_id), None)
    for event in events:
        if event.created_at < row.entered_at:
            continue
        for goal in definition.get("goals", []):
            if goal["event"] == event.type and where_holds(goal.get("where"), event.payload):
                await session.execute(
                    _CONVERT, {"id": row.id, "reason": f"goal:{event.type}", "now": now}
                )
                return False
        if (
            row.status == "waiting"
            and step is not None
            and step["type"] == "wait_for"
            and step["event"] == event.type
            and event.created_at >= row.step_since
            and where_holds(step.get("where"), event.payload)
        ):
            target = step.get("on_event")
            done = target is None
            await session.execute(
                _MOVE_ON,
                {
                    "id": row.id,
                    "status": "done" if done else "active",
                    "step": row.step_id if done else target,
                    "now": now,
                    "listens": [] if done else goal_events(definition),
                    "ended": now if done else None,
                    "reason": "completed" if done else None,
                },
            )
            return not done
    return False


# -- the contact leaving -------------------------------------------------------------------

CONTACT_CHANGES = ("contact.merged", "contact.erased", "contact.lost", "consent.changed")

IN_A_JOURNEY = (
    "EXISTS (SELECT 1 FROM campaign_enrolments e WHERE e.tenant_id = o.tenant_id "
    "AND e.contact_id = CASE WHEN o.type = 'contact.merged' THEN "
    f"{_uuid_of('merged_id')} ELSE {_uuid_of('contact_id')} END "
    "AND e.status IN ('active', 'waiting') "
    "AND (o.type <> 'consent.changed' OR o.payload->>'status' = 'opted_out'))"
)

_IN_JOURNEYS = text(
    """
    SELECT e.id, e.campaign_id, e.contact_id, e.occurrence, v.definition
      FROM campaign_enrolments e
      JOIN campaign_versions v ON v.campaign_id = e.campaign_id AND v.version = e.version
     WHERE e.tenant_id = :tenant AND e.contact_id = :contact
       AND e.status IN ('active', 'waiting')
     ORDER BY e.id
       FOR UPDATE OF e
    """
)

_EXIT = text(
    """
    UPDATE campaign_enrolments
       SET status = 'exited', end_reason = :reason, ended_at = :now, listens = '{}'
     WHERE id = ANY(CAST(:ids AS bigint[]))
    """
)

# The merged contact's enrolment becomes the survivor's, unless the survivor is in the
# journey already (or entered it on the same occurrence).
_FOLLOW = text(
    """
    UPDATE campaign_enrolments e SET contact_id = :survivor
     WHERE e.id = :id
       AND NOT EXISTS (SELECT 1 FROM campaign_enrolments s
                        WHERE s.campaign_id = e.campaign_id AND s.contact_id = :survivor
                          AND (s.status IN ('active', 'waiting') OR s.occurrence = e.occurrence))
    RETURNING e.id
    """
)


def _sends_on(definition: dict[str, Any]) -> set[str]:
    """The consent channels the journey's send steps need."""
    return {
        CHANNELS[s["channel"]]
        for s in definition["steps"]
        if s["type"] == "action" and s.get("action") == "send"
    } | (
        {"webhook"}
        if any(s.get("action") == "call_webhook" for s in definition["steps"])
        else set()
    )


@subscribe_many(
    "campaigns", *CONTACT_CHANGES, name="campaigns.follow_contacts", interest=IN_A_JOURNEY
)
async def follow_contacts(session: AsyncSession, events: list[Event]) -> None:
    """Contacts in journeys that were merged, erased, lost or opted out."""
    now = clock.now()
    for event in events:
        if event.tenant_id is None:
            continue
        payload = event.payload
        key = "merged_id" if event.type == "contact.merged" else "contact_id"
        try:
            contact = uuid.UUID(str(payload[key]))
        except (KeyError, ValueError):
            continue
        rows = (
            await session.execute(_IN_JOURNEYS, {"tenant": event.tenant_id, "contact": contact})
        ).all()
        leaving: dict[str, list[int]] = defaultdict(list)
        for row in rows:
            definition = row.definition
            if event.type == "contact.erased":
                leaving["erased"].append(row.id)
            elif event.type == "contact.lost":
                if definition.get("when_lost", "exit") == "exit":
                    leaving["lost"].append(row.id)
            elif event.type == "consent.changed":
                channel = payload.get("channel")
                if (
                    payload.get("status") == "opted_out"
                    and definition.get("when_opted_out") == "exit"
                    and (channel == "all" or channel in _sends_on(definition))
                ):
                    leaving["opted_out"].append(row.id)
            else:  # contact.merged
                try:
                    survivor = uuid.UUID(str(payload["survivor_id"]))
                except (KeyError, ValueError):
                    continue
                moved = await session.scalar(_FOLLOW, {"id": row.id, "survivor": survivor})
                if moved is None:
                    leaving["merged"].append(row.id)
        for reason, ids in leaving.items():
            await session.execute(_EXIT, {"ids": ids, "reason": reason, "now": now})
