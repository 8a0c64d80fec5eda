"""Applying what integrations sent (run by the users worker, never on the request path).

Each inbound row is applied once: it is locked (consumer.py claims it) and
marked processed in the same transaction as its effects. Every effect other
services care about goes out as a domain event (contact.added, contact.lost,
group.joined, order.paid...).
"""

from __future__ import annotations

import logging
import uuid
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from services.users import consent, repository
from services.users.identity import resolve
from services.users.ingest import read_payload
from services.users.repository import StoredEvent
from services.users.schemas import EventIn
from services.users.wecom_crypto import parse_xml
from shared.events import publish
from shared.runtime import runtime_of
from shared.scheduler import schedule

log = logging.getLogger("scrm.users.processing")


class UnappliableEvent(Exception):
    """A stored event that can never be applied as it is, such as one stored by an
    earlier version that did not check at ingest what is checked now: the worker
    makes it a dead letter at once instead of retrying it."""


def _ts(value: str | None) -> datetime:
    try:
        return datetime.fromtimestamp(int(value or ""), UTC)
    except ValueError:
        return datetime.now(UTC)


async def apply_inbound(session: AsyncSession, row: StoredEvent) -> str:
    """Apply one inbound event the caller claimed; returns its outcome.

    The row itself is left alone: the caller marks it applied (with the outcome
    and `row.contact_id`) at the end of its transaction. Until then the row is
    only locked, not updated, so a retried delivery of the same event checking
    its dedupe key does not wait for this transaction.
    """
    if row.payload_enc is None:  # erased before it was applied
        return "erased"
    payload = read_payload(runtime_of(session).cipher, row.tenant_id, row.payload_enc)
    if row.source == "wecom":
        return await _apply_wecom(session, row, payload)
    return await _apply_business_event(session, row, payload)


# -- WeCom -------------------------------------------------------------------------------


async def _apply_wecom(session: AsyncSession, row: StoredEvent, payload: dict[str, Any]) -> str:
    xml: str = payload["xml"]
    # Stored before the XML alone was: the reading came along.
    msg: dict[str, str] = payload["msg"] if "msg" in payload else parse_xml(xml)
    event = msg.get("Event", "")
    change = msg.get("ChangeType", "")
    if event == "change_external_contact" and change:
        return await _contact_change(session, row, msg, change)
    if event == "change_external_chat" and change:
        return await _chat_change(session, row, msg, change, xml)
    if event == "change_external_tag" and change:
        await publish(
            session,
            "wecom.tag_changed",
            {
                "change_type": change,
                "tag_type": msg.get("TagType"),
                "id": msg.get("Id"),
                "strategy_id": msg.get("StrategyId"),
                "occurred_at": _ts(msg.get("CreateTime")).isoformat(),
            },
            tenant_id=row.tenant_id,
        )
        return f"tag.{change}"
    return "ignored"


async def _contact_change(
    session: AsyncSession, row: StoredEvent, msg: dict[str, str], change: str
) -> str:
    tenant_id = row.tenant_id
    staff = msg.get("UserID", "")
    external = msg.get("ExternalUserID", "")
    occurred = _ts(msg.get("CreateTime"))
    if staff:
        await repository.upsert_staff(session, tenant_id, staff)
    if not external:
        return f"{change}:no_contact"
    cipher = runtime_of(session).cipher
    found = await resolve(session, cipher, tenant_id, {"external_userid": external}, source="wecom")
    assert found is not None
    contact_id = found.contact_id
    row.contact_id = contact_id
    # Identifiers stay out of events and the timeline: consumers use contact_id.
    facts: dict[str, Any] = {"staff_userid": staff}
    status = {
        "add_external_contact": "active",
        "add_half_external_contact": "half",
        "del_external_contact": "deleted_by_staff",
        "del_follow_user": "deleted_by_contact",
    }.get(change)
    previous = None
    if status is not None and staff:
        adding = status in ("active", "half")
        previous = await repository.upsert_follow(
            session,
            tenant_id,
            contact_id,
            staff,
            status=status,
            state=msg.get("State") or None,
            welcome_code=msg.get("WelcomeCode") or None,
            added_at=occurred if adding else None,
            removed_at=None if adding else occurred,
        )
        if adding and await repository.claim_owner(
            session, contact_id, staff, msg.get("State") or None
        ):
            await repository.publish_profiles(session, [contact_id])
    if change in ("add_external_contact", "add_half_external_contact"):
        facts.update(state=msg.get("State") or None, welcome_code=msg.get("WelcomeCode") or None)
    if change == "transfer_fail":
        facts["fail_reason"] = msg.get("FailReason")
    await repository.add_timeline_event(
        session,
        tenant_id,
        contact_id,
        type=f"wecom.{change}",
        source="wecom",
        source_event_id=row.dedupe_key,
        occurred_at=occurred,
        properties=facts,
    )
    payload = {"contact_id": str(contact_id), "occurred_at": occurred.isoformat(), **facts}
    if change == "add_external_contact" and previous != "active":
        await publish(
            session, "contact.added", {**payload, "new_contact": found.created}, tenant_id=tenant_id
        )
    elif change == "add_half_external_contact":
        await publish(session, "contact.half_added", payload, tenant_id=tenant_id)
    elif change == "edit_external_contact":
        await publish(session, "contact.updated", payload, tenant_id=tenant_id)
    elif change == "del_follow_user":
        await repository.churn(session, contact_id, occurred)
        await publish(
            session,
            "contact.lost",
            {**payload, "reason": "deleted_by_contact"},
            tenant_id=tenant_id,
        )
    elif change == "del_external_contact":
        await publish(session, "contact.removed_by_staff", payload, tenant_id=tenant_id)
        if not await repository.active_follow_count(session, tenant_id, contact_id):
            await publish(
                session,
                "contact.lost",
                {**payload, "reason": "deleted_by_staff"},
                tenant_id=tenant_id,
            )
    elif change == "transfer_fail":
        await publish(session, "contact.transfer_failed", payload, tenant_id=tenant_id)
    if change in ("add_external_contact", "edit_external_contact", "add_half_external_contact"):
        await schedule_enrichment(session, tenant_id, contact_id)
    return f"contact.{change}"


async def schedule_enrichment(
    session: AsyncSession, tenant_id: uuid.UUID, contact_id: uuid.UUID
) -> None:
    """Fetch the contact's details from the WeCom API soon (retried while unreachable).

    The job carries the contact id only: job rows are stored in clear. Tenants
    without an app secret have nothing to fetch with, so nothing is scheduled.
    """
    if not await repository.has_wecom_api(session, tenant_id):
        return
    await schedule(
        session,
        service="users",
        job="enrich_contact",
        due_at=datetime.now(UTC),
        args={"contact_id": str(contact_id)},
        tenant_id=tenant_id,
    )


def _member_ids(xml_text: str) -> list[str]:
    root = ET.fromstring(xml_text)  # noqa: S314  (checked for DOCTYPE/ENTITY at the door)
    holder = root.find("MemChangeList")
    return (
        [item.text.strip() for item in holder.iter("Item") if item.text]
        if holder is not None
        else []
    )


async def _chat_change(
    session: AsyncSession, row: StoredEvent, msg: dict[str, str], change: str, xml: str
) -> str:
    tenant_id = row.tenant_id
    chat_id = msg.get("ChatId", "")
    occurred = _ts(msg.get("CreateTime"))
    if not chat_id:
        return f"chat.{change}:no_chat"
    if change == "create":
        await repository.upsert_group(session, tenant_id, chat_id, status="active")
        await publish(
            session,
            "group.created",
            {"chat_id": chat_id, "occurred_at": occurred.isoformat()},
            tenant_id=tenant_id,
        )
    elif change == "dismiss":
        await repository.upsert_group(
            session, tenant_id, chat_id, status="dismissed", dismissed_at=occurred
        )
        for member in await repository.group_member_ids(session, tenant_id, chat_id):
            await repository.leave_group(session, tenant_id, chat_id, member, occurred)
        await publish(
            session,
            "group.dismissed",
            {"chat_id": chat_id, "occurred_at": occurred.isoformat()},
            tenant_id=tenant_id,
        )
        return "chat.dismiss"
    elif change == "update":
        detail = msg.get("UpdateDetail", "")
        await repository.upsert_group(session, tenant_id, chat_id)
        members = _member_ids(xml)
        if detail in ("add_member", "del_member") and members:
            await _member_changes(session, row, chat_id, detail, members, msg, occurred)
    if not await repository.has_wecom_api(session, tenant_id):
        return f"chat.{change}"
    await schedule(
        session,
        service="users",
        job="sync_group",
        due_at=datetime.now(UTC),
        args={"chat_id": chat_id},
        tenant_id=tenant_id,
        dedupe_key=f"sync_group:{tenant_id}:{row.dedupe_key}",
    )
    return f"chat.{change}"


async def _member_changes(
    session: AsyncSession,
    row: StoredEvent,
    chat_id: str,
    detail: str,
    members: list[str],
    msg: dict[str, str],
    occurred: datetime,
) -> None:
    tenant_id = row.tenant_id
    cipher = runtime_of(session).cipher
    for member in members:
        # External contacts' ids start with wm/wo; others are staff userids.
        external = member.startswith(("wm", "wo"))
        contact_id = None
        if external:
            found = await resolve(
                session, cipher, tenant_id, {"external_userid": member}, source="wecom"
            )
            contact_id = found.contact_id if found else None
        if detail == "add_member":
            scene = msg.get("JoinScene")
            joined = await repository.join_group(
                session,
                tenant_id,
                chat_id,
                member,
                member_type=2 if external else 1,
                contact_id=contact_id,
                joined_at=occurred,
                join_scene=int(scene) if scene and scene.isdigit() else None,
            )
            if joined and contact_id is not None:
                await publish(
                    session,
                    "group.joined",
                    {
                        "chat_id": chat_id,
                        "contact_id": str(contact_id),
                        "occurred_at": occurred.isoformat(),
                        "join_scene": scene,
                    },
                    tenant_id=tenant_id,
                )
        else:
            left = await repository.leave_group(session, tenant_id, chat_id, member, occurred)
            if left is not False and contact_id is not None:
                await publish(
                    session,
                    "group.left",
                    {
                        "chat_id": chat_id,
                        "contact_id": str(contact_id),
                        "occurred_at": occurred.isoformat(),
                        "quit_scene": msg.get("QuitScene"),
                    },
                    tenant_id=tenant_id,
                )
        if contact_id is not None:
            await repository.add_timeline_event(
                session,
                tenant_id,
                contact_id,
                type="group.joined" if detail == "add_member" else "group.left",
                source="wecom",
                source_event_id=f"{row.dedupe_key}:{member}",
                occurred_at=occurred,
                properties={"chat_id": chat_id},
            )


# -- business events (webhooks, the event API, imports) ---------------------------------


def _checked(row: StoredEvent, event: dict[str, Any]) -> EventIn:
    """The stored event checked as ingest checks events today (see UnappliableEvent)."""
    try:
        return EventIn.model_validate({k: v for k, v in event.items() if k != "via"})
    except ValidationError as exc:
        # Dead letters are stored in clear: what was wrong, never the personal data.
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'event'}: "
            + (
                f"invalid {e['loc'][1]}"
                if e["loc"][:1] == ("contact",) and len(e["loc"]) > 1
                else e["msg"]
            )
            for e in exc.errors()
        )
        raise UnappliableEvent(
            f"{event.get('type')} event {event.get('event_id')!r} (inbound {row.id}) is "
            f"invalid: {problems}"
        ) from None


async def _apply_business_event(
    session: AsyncSession, row: StoredEvent, event: dict[str, Any]
) -> str:
    tenant_id = row.tenant_id
    cipher = runtime_of(session).cipher
    checked = _checked(row, event)
    contact = checked.contact.model_dump(exclude_none=True)
    found = await resolve(session, cipher, tenant_id, contact, source=row.source)
    assert found is not None
    row.contact_id = found.contact_id
    occurred = datetime.fromisoformat(event["occurred_at"])
    properties: dict[str, Any] = event.get("properties") or {}
    fresh = await repository.add_timeline_event(
        session,
        tenant_id,
        found.contact_id,
        type=event["type"],
        source=row.source,
        source_event_id=event["event_id"],
        occurred_at=occurred,
        properties=properties,
    )
    if not fresh:
        return "duplicate"
    if event["type"] in ("consent.opt_in", "consent.opt_out"):
        await consent.record(
            session,
            tenant_id,
            found.contact_id,
            channel=str(properties.get("channel", "all")),
            opted_in=event["type"] == "consent.opt_in",
            source=f"{row.source}:{event['event_id']}",
            note=properties.get("note"),
        )
    await publish(
        session,
        event["type"],
        {
            "contact_id": str(found.contact_id),
            "event_id": event["event_id"],
            "occurred_at": occurred.isoformat(),
            "properties": properties,
            "source": row.source,
        },
        tenant_id=tenant_id,
    )
    return str(event["type"])
