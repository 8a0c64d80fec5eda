"""Applying what integrations sent (run by the users worker, never on the request path).

Each inbound row is applied once: it is locked (consumer.py claims it) and
marked processed in the same transaction as its effects. The consumer applies
the rows it claims together (apply_batch, inbound_batch.py); a row applied
alone goes through the same steps. Every effect other
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
from services.users.inbound_batch import (
    BatchOutbox,
    InboundBatch,
    PlannedRow,
    RowEffects,
    consent_channel,
    consent_status,
    contact_facts,
    contact_identities,
)
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


# Where apply_batch keeps its InboundBatch in the session, for apply_inbound to find.
_BATCH = "scrm.users.inbound_batch"


async def apply_batch(session: AsyncSession, rows: list[StoredEvent]) -> list[str]:
    """Apply rows the caller claimed, together (inbound_batch.py); returns each outcome.

    Each row is read by `apply_inbound`, which hands the common kinds over to the
    batch; the batch applies them with a few statements for all. The rows are left
    alone as in `apply_inbound`.
    """
    batch = InboundBatch(runtime_of(session).cipher, bulk=True, publish_row=_publish_row)
    session.info[_BATCH] = batch
    try:
        outcomes = [await apply_inbound(session, row) for row in rows]
        await batch.flush(session)
    finally:
        session.info.pop(_BATCH, None)
    return [batch.outcomes.get(r.id, outcome) for r, outcome in zip(rows, outcomes, strict=True)]


async def apply_inbound(session: AsyncSession, row: StoredEvent) -> str:
    """Apply one inbound event the caller claimed; returns its outcome.

    The row itself is left alone: the caller marks it applied (with the outcome
    and `row.contact_id`) at the end of its transaction. Until then the row is
    only locked, not updated, so a retried delivery of the same event checking
    its dedupe key does not wait for this transaction.

    Within `apply_batch` a row of a common kind is only read and checked here, and
    applied with the batch (its outcome may then become "duplicate"); a row of
    another kind is applied at once, after the rows before it.
    """
    if row.payload_enc is None:  # erased before it was applied
        return "erased"
    cipher = runtime_of(session).cipher
    payload = read_payload(cipher, row.tenant_id, row.payload_enc)
    batch: InboundBatch | None = session.info.get(_BATCH)
    if row.source == "wecom":
        xml: str = payload["xml"]
        # Stored before the XML alone was: the reading came along.
        msg: dict[str, str] = payload["msg"] if "msg" in payload else parse_xml(xml)
        planned, outcome = _plan_wecom(row, msg)
    else:
        planned, outcome = _plan_business_event(row, payload), str(payload.get("type"))
    if planned is None:
        if batch is not None:
            await batch.flush(session)  # the rows before this one come first
        return await _chat_change(session, row, msg, msg.get("ChangeType", ""), xml)
    if batch is None:
        batch = InboundBatch(cipher, bulk=False, publish_row=_publish_row)
        batch.add(planned)
        await batch.flush(session)
    else:
        batch.add(planned)
    return batch.outcomes.get(row.id, outcome)


def _publish_row(
    session: AsyncSession, outbox: BatchOutbox, r: PlannedRow, effects: RowEffects
) -> None:
    """The domain events of one applied row (in the batch's outbox, in row order)."""
    tenant_id = r.row.tenant_id
    if r.kind == "tag":
        outbox.publish(session, "wecom.tag_changed", r.tag_change, tenant_id=tenant_id)
    elif r.kind == "contact":
        _publish_contact_change(session, outbox, r, effects)
    elif r.kind == "business":
        event = r.event
        if r.event_type in ("consent.opt_in", "consent.opt_out"):
            outbox.publish(
                session,
                "consent.changed",
                {
                    "contact_id": str(r.contact_id),
                    "channel": consent_channel(r),
                    "status": consent_status(r),
                },
                tenant_id=tenant_id,
            )
        # Published again under its own type, for the other services.
        outbox.publish(
            session,
            event["type"],
            {
                "contact_id": str(r.contact_id),
                "event_id": r.event_id,
                "occurred_at": r.occurred_at.isoformat(),
                "properties": r.properties,
                "source": r.row.source,
            },
            tenant_id=tenant_id,
        )


def _publish_contact_change(
    session: AsyncSession, outbox: BatchOutbox, r: PlannedRow, effects: RowEffects
) -> None:
    tenant_id = r.row.tenant_id
    payload = {
        "contact_id": str(r.contact_id),
        "occurred_at": r.occurred_at.isoformat(),
        **contact_facts(r),
    }
    change = r.change
    if change == "add_external_contact" and effects.previous != "active":
        outbox.publish(
            session, "contact.added", {**payload, "new_contact": r.created}, tenant_id=tenant_id
        )
    elif change == "add_half_external_contact":
        outbox.publish(session, "contact.half_added", payload, tenant_id=tenant_id)
    elif change == "edit_external_contact":
        outbox.publish(session, "contact.updated", payload, tenant_id=tenant_id)
    elif change == "del_follow_user":
        outbox.publish(
            session,
            "contact.lost",
            {**payload, "reason": "deleted_by_contact"},
            tenant_id=tenant_id,
        )
    elif change == "del_external_contact":
        outbox.publish(session, "contact.removed_by_staff", payload, tenant_id=tenant_id)
        if not effects.still_followed:
            outbox.publish(
                session,
                "contact.lost",
                {**payload, "reason": "deleted_by_staff"},
                tenant_id=tenant_id,
            )
    elif change == "transfer_fail":
        outbox.publish(session, "contact.transfer_failed", payload, tenant_id=tenant_id)


# -- WeCom -------------------------------------------------------------------------------


def _plan_wecom(row: StoredEvent, msg: dict[str, str]) -> tuple[PlannedRow | None, str]:
    """The row for the batch (None for a customer group change: applied alone)."""
    event = msg.get("Event", "")
    change = msg.get("ChangeType", "")
    occurred = _ts(msg.get("CreateTime"))
    if event == "change_external_chat" and change:
        return None, ""
    if event == "change_external_tag" and change:
        tag_change = {
            "change_type": change,
            "tag_type": msg.get("TagType"),
            "id": msg.get("Id"),
            "strategy_id": msg.get("StrategyId"),
            "occurred_at": occurred.isoformat(),
        }
        return PlannedRow(row, "tag", "wecom", tag_change=tag_change), f"tag.{change}"
    if not (event == "change_external_contact" and change):
        return PlannedRow(row, "ignored", "wecom"), "ignored"
    external = msg.get("ExternalUserID", "")
    planned = PlannedRow(
        row,
        "contact",
        "wecom",
        identities=contact_identities({"external_userid": external}) if external else {},
        occurred_at=occurred,
        change=change,
        staff=msg.get("UserID", ""),
        state=msg.get("State") or None,
        welcome_code=msg.get("WelcomeCode") or None,
        fail_reason=msg.get("FailReason"),
    )
    return planned, f"contact.{change}" if external else f"{change}:no_contact"


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


def _plan_business_event(row: StoredEvent, event: dict[str, Any]) -> PlannedRow:
    checked = _checked(row, event)
    properties: dict[str, Any] = event.get("properties") or {}
    if event["type"] in ("consent.opt_in", "consent.opt_out"):
        consent.check_channel(str(properties.get("channel", "all")))
    return PlannedRow(
        row,
        "business",
        row.source,
        identities=contact_identities(checked.contact.model_dump(exclude_none=True)),
        occurred_at=datetime.fromisoformat(event["occurred_at"]),
        event=event,
        event_type=str(event["type"]),
        event_id=str(event["event_id"]),
        properties=properties,
    )
