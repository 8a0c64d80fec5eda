"""The read model, fed by events: profiles, event counts by day, events with their
properties, customer-group memberships, consent and points tier; merges and erasure.

One batch (many tenants, many contacts) costs a few statements per tenant:

1. a profile for every contact the batch names (created when first seen);
2. merges: the merged profiles marked, their counts, events, orders and group
   memberships moved to the live survivor once (a profile already merged is not
   moved again), the survivor gaining every kind of fact;
3. every contact resolved to its live profile (a merged one's survivor, through
   chains; erased ones are skipped);
4. the contact events' last word per profile (owner, channel, attributes, consent,
   points tier, lost / followed again) in one UPDATE, and group memberships;
5. business events recorded once each (by their bus event id), counted on their
   tenant-local day of `occurred_at`, with the orders they pay or refund and the
   profile's first/last order and last interaction;
6. erasure: personal facts cleared, event properties emptied (counts stay).
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from services.tagging.facts import FIELDS, Changes, event_fact, field_fact, group_fact
from services.tagging.profile import merge_repository, repository
from services.tagging.profile.repository import NewEvent, ProfileEdit
from shared.events import Event

log = logging.getLogger("scrm.tagging.ingest")

# Business events (as the users service publishes them once applied): counted.
COUNTED = frozenset(
    {
        "order.paid",
        "order.refunded",
        "checkin",
        "comment",
        "page.view",
        "product.view",
        "cart.add",
        "share",
        "live.watch",
        "consent.opt_in",
        "consent.opt_out",
        "referral.succeeded",
    }
)
# Counted but not an interaction of the contact's own.
NOT_INTERACTION = frozenset({"consent.opt_in", "consent.opt_out", "order.refunded"})
ALL_FIELDS = tuple(field_fact(name) for name in FIELDS)


@dataclass(frozen=True)
class AppliedEvent:
    """A contact's business event as the read model recorded it: its contact is the
    live one it belongs to now (a merged contact's survivor)."""

    tenant_id: uuid.UUID
    contact_id: uuid.UUID
    event_type: str
    occurred_at: datetime
    day: date  # tenant-local day of occurred_at
    properties: dict[str, Any] = field(default_factory=dict)
    source_event_id: uuid.UUID | None = None
    # The outbox event (bus id) it came from.
    event_id: int = 0


def is_counted(event_type: str) -> bool:
    return event_type in COUNTED or event_type.startswith("custom.")


class _Malformed(ValueError):
    """An event whose payload does not carry what its type promises."""


def _uuid(payload: Any, key: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(payload[key]))
    except (KeyError, TypeError, ValueError) as exc:
        raise _Malformed(f"{key} missing or not a uuid") from exc


def _time(payload: Any, key: str, default: datetime) -> datetime:
    value = payload.get(key)
    if value is None:
        return default
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError as exc:
        raise _Malformed(f"{key} is not a timestamp") from exc
    if moment.tzinfo is None:
        raise _Malformed(f"{key} has no time zone")
    return moment


def _text(payload: Any, key: str, limit: int) -> str | None:
    value = payload.get(key)
    return None if value is None else str(value)[:limit]


@dataclass
class _TenantBatch:
    """One tenant's share of the batch, folded in outbox order."""

    first_seen: dict[uuid.UUID, datetime] = field(default_factory=dict)
    merges: dict[uuid.UUID, uuid.UUID] = field(default_factory=dict)
    erased: list[uuid.UUID] = field(default_factory=list)
    edits: dict[uuid.UUID, ProfileEdit] = field(default_factory=dict)
    dismissed: set[str] = field(default_factory=set)
    # (chat, contact) -> joined at, or None for left; the last word of each.
    memberships: dict[tuple[str, uuid.UUID], datetime | None] = field(default_factory=dict)
    business: list[tuple[Event, uuid.UUID, datetime]] = field(default_factory=list)

    def seen(self, contact_id: uuid.UUID, at: datetime) -> None:
        known = self.first_seen.get(contact_id)
        if known is None or at < known:
            self.first_seen[contact_id] = at

    def edit(self, contact_id: uuid.UUID) -> ProfileEdit:
        return self.edits.setdefault(contact_id, ProfileEdit())


def _fold(batch: _TenantBatch, event: Event) -> None:
    payload = event.payload
    kind = event.type
    at = event.created_at
    if is_counted(kind):
        contact_key = "inviter_contact_id" if kind == "referral.succeeded" else "contact_id"
        contact = _uuid(payload, contact_key)
        occurred = _time(payload, "occurred_at", at)
        batch.seen(contact, min(occurred, at))
        batch.business.append((event, contact, occurred))
    elif kind == "contact.merged":
        survivor, merged = _uuid(payload, "survivor_id"), _uuid(payload, "merged_id")
        batch.seen(survivor, at)
        batch.seen(merged, at)
        if survivor != merged:
            batch.merges.setdefault(merged, survivor)
    elif kind == "contact.erased":
        contact = _uuid(payload, "contact_id")
        batch.seen(contact, at)
        batch.erased.append(contact)
    elif kind == "group.dismissed":
        chat = str(payload["chat_id"])[:100]
        batch.dismissed.add(chat)
        for key in [key for key in batch.memberships if key[0] == chat]:
            del batch.memberships[key]
    elif kind in ("group.joined", "group.left"):
        contact = _uuid(payload, "contact_id")
        occurred = _time(payload, "occurred_at", at)
        batch.seen(contact, min(occurred, at))
        chat = str(payload["chat_id"])[:100]
        batch.memberships[(chat, contact)] = occurred if kind == "group.joined" else None
    else:
        _fold_contact_event(batch, event)


def _fold_contact_event(batch: _TenantBatch, event: Event) -> None:
    payload = event.payload
    contact = _uuid(payload, "contact_id")
    occurred = _time(payload, "occurred_at", event.created_at)
    if event.type == "contact.profile_changed":
        created = _time(payload, "created_at", event.created_at)
        batch.seen(contact, created)
        edit = batch.edit(contact)
        edit.full = True
        edit.created_at = created
        edit.owner_staff = _text(payload, "owner_staff", 64)
        edit.channel = _text(payload, "channel", 64)
        attributes = payload.get("attributes")
        edit.attributes = dict(attributes) if isinstance(attributes, dict) else {}
        return
    batch.seen(contact, min(occurred, event.created_at))
    if event.type == "contact.added":
        edit = batch.edit(contact)
        edit.owner_default = _text(payload, "staff_userid", 64) or edit.owner_default
        edit.channel_default = _text(payload, "state", 64) or edit.channel_default
        edit.lost, edit.lost_at, edit.lost_reason = 1, None, None
    elif event.type == "contact.lost":
        edit = batch.edit(contact)
        edit.lost, edit.lost_at = 2, occurred
        edit.lost_reason = _text(payload, "reason", 32) or "unknown"
    elif event.type == "consent.changed":
        status = payload.get("status")
        if status not in ("opted_in", "opted_out"):
            raise _Malformed("consent status must be opted_in or opted_out")
        edit = batch.edit(contact)
        edit.consent = {**(edit.consent or {}), str(payload["channel"]): status}
    elif event.type == "tier.changed":
        edit = batch.edit(contact)
        edit.tier_set, edit.points_tier = True, _text(payload, "to", 32)
    # contact.half_added, .updated, .imported, .removed_by_staff: known, nothing more.


def _by_tenant(events: list[Event]) -> dict[uuid.UUID, _TenantBatch]:
    batches: dict[uuid.UUID, _TenantBatch] = defaultdict(_TenantBatch)
    for event in events:
        if event.tenant_id is None:
            continue
        try:
            _fold(batches[event.tenant_id], event)
        except (_Malformed, KeyError, TypeError) as exc:
            # A malformed event must not hold back the batch (nor be retried forever).
            log.warning(
                "tagging: event %s (%s, tenant %s) skipped: %s",
                event.id,
                event.type,
                event.tenant_id,
                exc,
            )
    return batches


async def apply(
    session: AsyncSession, events: list[Event], changes: Changes, now: datetime
) -> list[AppliedEvent]:
    """Record the batch in the read model; returns the business events applied (each
    once: an event already recorded is not returned again)."""
    applied: list[AppliedEvent] = []
    for tenant_id, batch in _by_tenant(events).items():
        applied += await _apply_tenant(session, tenant_id, batch, changes, now)
    return applied


async def _apply_tenant(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    batch: _TenantBatch,
    changes: Changes,
    now: datetime,
) -> list[AppliedEvent]:
    new = await repository.ensure_profiles(session, tenant_id, batch.first_seen, now)
    changes.add_many(tenant_id, new, *ALL_FIELDS)

    if batch.merges:
        await _merge(session, tenant_id, batch.merges, changes, now)

    live = await repository.resolve_live(session, tenant_id, list(batch.first_seen))

    edits: dict[uuid.UUID, ProfileEdit] = {}
    for contact, edit in batch.edits.items():
        target = live.get(contact)
        if target is not None:
            # Several ids of one survivor in a batch: the last folded edit wins.
            edits[target] = edit
    for contact, names in (
        await repository.update_profiles(session, tenant_id, edits, now)
    ).items():
        changes.add(tenant_id, contact, *(field_fact(name) for name in names))

    joins: list[tuple[str, uuid.UUID, datetime]] = []
    leaves: list[tuple[str, uuid.UUID]] = []
    for (chat, contact), joined_at in batch.memberships.items():
        target = live.get(contact)
        if target is None:
            continue
        if joined_at is None:
            leaves.append((chat, target))
        else:
            joins.append((chat, target, joined_at))
    for contact, chat in await repository.apply_group_changes(
        session, tenant_id, sorted(batch.dismissed), joins, leaves
    ):
        changes.add(tenant_id, contact, group_fact(chat))

    recorded: list[NewEvent] = []
    sources: dict[uuid.UUID, Event] = {}
    for event, contact, occurred in batch.business:
        target = live.get(contact)
        if target is None or event.event_id in sources:
            continue
        recorded.append(_new_event(event, target, occurred))
        sources[event.event_id] = event
    days = await repository.record_events(session, tenant_id, recorded, now)

    erased: set[uuid.UUID] = set()
    if batch.erased:
        erased_now, dropped = await merge_repository.erase(session, tenant_id, batch.erased, now)
        erased = set(batch.erased)
        changes.add_many(tenant_id, erased_now, *ALL_FIELDS)
        for contact, chat in dropped:
            changes.add(tenant_id, contact, group_fact(chat))

    applied: list[AppliedEvent] = []
    for new_event in recorded:
        day = days.get(new_event.source_event_id)
        if day is None or new_event.contact_id in erased:
            continue
        changes.add(tenant_id, new_event.contact_id, event_fact(new_event.event_type))
        applied.append(
            AppliedEvent(
                tenant_id=tenant_id,
                contact_id=new_event.contact_id,
                event_type=new_event.event_type,
                occurred_at=new_event.occurred_at,
                day=day,
                properties=new_event.properties,
                source_event_id=new_event.source_event_id,
                event_id=sources[new_event.source_event_id].id,
            )
        )
    return applied


async def _merge(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    merges: dict[uuid.UUID, uuid.UUID],
    changes: Changes,
    now: datetime,
) -> None:
    merged = await merge_repository.mark_merged(session, tenant_id, merges, now)
    if not merged:
        return
    # Move straight to the live end of each chain (A -> B -> C in one batch: A's to C).
    live = await repository.resolve_live(session, tenant_id, [merges[m] for m in merged])
    moves = {m: live[merges[m]] for m in merged if merges[m] in live and live[merges[m]] != m}
    changes.add_many(tenant_id, merged, *ALL_FIELDS)
    if not moves:
        return
    moved = await merge_repository.move_to_survivors(session, tenant_id, moves, now)
    changes.add_many(tenant_id, set(moves.values()), *ALL_FIELDS)
    for survivor, event_type in moved.event_types:
        changes.add(tenant_id, survivor, event_fact(event_type))
    for survivor, chat in moved.groups:
        changes.add(tenant_id, survivor, group_fact(chat))


def _new_event(event: Event, contact: uuid.UUID, occurred: datetime) -> NewEvent:
    kind = event.type
    raw = event.payload.get("properties")
    properties: dict[str, Any] = dict(raw) if isinstance(raw, dict) else {}
    order_id: str | None = None
    amount = 0
    if kind in ("order.paid", "order.refunded"):
        value = properties.get("order_id")
        order_id = None if value is None else str(value)[:128]
        fen = properties.get("amount_fen" if kind == "order.paid" else "refund_fen")
        amount = fen if isinstance(fen, int) and not isinstance(fen, bool) and fen >= 0 else 0
    return NewEvent(
        source_event_id=event.event_id,
        contact_id=contact,
        event_type=kind[:100],
        occurred_at=occurred,
        properties=properties,
        interaction=kind not in NOT_INTERACTION,
        order_id=order_id,
        amount_fen=amount,
    )
