"""Applying claimed inbound events together: a few statements per batch, not per event.

processing.apply_inbound reads each row (decrypts, parses, checks it) and, for the
common kinds (WeCom contact changes and tag changes, business events), hands it
to an `InboundBatch` instead of applying it. `flush` then applies every row
handed over so far, in their order, with one statement per step for all of them:

1. identities: every identifier of the batch looked up at once; new contacts and
   identities inserted at once. A row whose identifiers turn out to belong to two
   contacts is resolved alone (identity.resolve merges them) after the rows before
   it are applied, and the rows after it are looked up again.
2. staff, follows (their previous status, per row in order, decides whether an add
   is news), owners and channels of the contacts added, churn;
3. timeline entries (a business event already on it is a duplicate, and does
   nothing else), consent changes, enrichment jobs;
4. `contact.profile_changed` for the contacts created or whose owner or channel
   changed, then every row's domain events in row order (one executemany).

Rows of other kinds (customer group changes) are applied one at a time by
processing.py, after a flush of what came before them, so the batch keeps the
order of the rows. A batch that meets an identity another writer attached
meanwhile raises IdentityRace: the consumer then applies its rows one by one,
where identity.resolve settles such races.

Outside the consumer's batches (a row applied alone) the same steps run for one
row, with identity.resolve doing the resolution.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from services.users import repository
from services.users.identity import identity_context, lookup_keys, normalise, resolve
from shared.crypto import FieldCipher
from shared.errors import InvalidInput

# WeCom contact changes that set the follow's status.
FOLLOW_STATUS = {
    "add_external_contact": "active",
    "add_half_external_contact": "half",
    "del_external_contact": "deleted_by_staff",
    "del_follow_user": "deleted_by_contact",
}
_ADDING = ("active", "half")
_ENRICHED = ("add_external_contact", "edit_external_contact", "add_half_external_contact")


class IdentityRace(Exception):
    """Another writer attached one of the batch's identifiers since it was looked up."""


@dataclass
class PlannedRow:
    """One inbound row, read and checked, waiting for its batch to be applied."""

    row: repository.StoredEvent
    kind: str  # "contact" (WeCom contact change), "tag" (WeCom tag change), "business"
    source: str  # identity source: "wecom" or the row's
    identities: dict[str, str] = field(default_factory=dict)  # kind -> normalised value
    occurred_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    # WeCom contact changes
    change: str = ""
    staff: str = ""
    state: str | None = None
    welcome_code: str | None = None
    fail_reason: str | None = None
    # Business events (`event` as stored)
    event: dict[str, Any] = field(default_factory=dict)
    event_type: str = ""
    event_id: str = ""
    properties: dict[str, Any] = field(default_factory=dict)
    # Tag changes: the payload to publish
    tag_change: dict[str, Any] = field(default_factory=dict)
    # Resolution
    contact_id: uuid.UUID | None = None
    created: bool = False

    @property
    def needs_contact(self) -> bool:
        return bool(self.identities)


@dataclass
class _Resolving:
    """Identities looked up for the rows of one flush, and those it creates."""

    owners: dict[tuple[uuid.UUID, str, bytes], uuid.UUID]
    keys: dict[int, dict[str, list[bytes]]]


@dataclass(frozen=True)
class RowEffects:
    """What applying a row found, for the events it publishes."""

    previous: str | None  # the follow's status before the row (contact changes)
    still_followed: bool  # after a staff member deleted the contact: anyone left?


class BatchOutbox:
    """`shared.events.publish` for a batch: the events are kept in the order they are
    published and written with one statement at the end (`flush`), in the batch's
    transaction. Each call names its type, as a call of publish() does."""

    def __init__(self) -> None:
        self.events: list[tuple[uuid.UUID | None, str, Mapping[str, Any]]] = []

    def publish(
        self,
        session: AsyncSession,
        event_type: str,
        payload: Mapping[str, Any],
        *,
        tenant_id: uuid.UUID | None,
    ) -> None:
        self.events.append((tenant_id, event_type, payload))

    async def flush(self, session: AsyncSession) -> None:
        events, self.events = self.events, []
        await repository.insert_outbox(session, events)


# Publishes a row's domain events (processing.py, where each type is named).
PublishRow = Callable[[AsyncSession, BatchOutbox, PlannedRow, RowEffects], None]


def contact_facts(r: PlannedRow) -> dict[str, Any]:
    """What a WeCom contact change says, for its timeline entry and its events.
    Identifiers stay out of both: consumers use contact_id."""
    facts: dict[str, Any] = {"staff_userid": r.staff}
    if r.change in ("add_external_contact", "add_half_external_contact"):
        facts.update(state=r.state, welcome_code=r.welcome_code)
    if r.change == "transfer_fail":
        facts["fail_reason"] = r.fail_reason
    return facts


def consent_channel(r: PlannedRow) -> str:
    return str(r.properties.get("channel", "all"))


def consent_status(r: PlannedRow) -> str:
    return "opted_in" if r.event_type == "consent.opt_in" else "opted_out"


class InboundBatch:
    """Rows handed over by processing.apply_inbound, applied together by `flush`."""

    def __init__(self, cipher: FieldCipher, *, bulk: bool, publish_row: PublishRow) -> None:
        self.cipher = cipher
        self.bulk = bulk  # False: one row applied alone, resolved by identity.resolve
        self.publish_row = publish_row
        self.pending: list[PlannedRow] = []
        # Outcomes known only once applied (a business event already applied).
        self.outcomes: dict[int, str] = {}

    def add(self, planned: PlannedRow) -> None:
        self.pending.append(planned)

    async def flush(self, session: AsyncSession) -> None:
        """Apply every row handed over so far, in order."""
        rows, self.pending = self.pending, []
        while rows:
            if self.bulk:
                resolved, rest = await self._resolve_bulk(session, rows)
            else:
                resolved, rest = [await self._resolve_alone(session, rows[0])], rows[1:]
            await self._apply(session, resolved)
            rows = rest

    # -- resolution ---------------------------------------------------------------------

    async def _resolve_alone(self, session: AsyncSession, planned: PlannedRow) -> PlannedRow:
        if planned.needs_contact:
            found = await resolve(
                session,
                self.cipher,
                planned.row.tenant_id,
                planned.identities,
                source=planned.source,
                announce=False,
            )
            assert found is not None
            planned.contact_id, planned.created = found.contact_id, found.created
            planned.row.contact_id = found.contact_id
        return planned

    async def _resolve_bulk(
        self, session: AsyncSession, rows: list[PlannedRow]
    ) -> tuple[list[PlannedRow], list[PlannedRow]]:
        """Resolve rows in order up to the first that needs a merge; returns the rows
        resolved (that one included, resolved alone after the others are applied) and
        the rows still to resolve."""
        keys: dict[int, dict[str, list[bytes]]] = {}
        lookups: list[tuple[uuid.UUID, str, bytes]] = []
        for position, planned in enumerate(rows):
            tenant = planned.row.tenant_id
            keys[position] = {
                kind: lookup_keys(self.cipher, tenant, kind, value)
                for kind, value in planned.identities.items()
            }
            lookups.extend((tenant, k, b) for k, forms in keys[position].items() for b in forms)
        owners = await repository.identity_owners(session, lookups)
        new_contacts: list[tuple[uuid.UUID, uuid.UUID]] = []
        new_identities: list[tuple[uuid.UUID, uuid.UUID, str, bytes, bytes, str]] = []
        resolved: list[PlannedRow] = []
        for position, planned in enumerate(rows):
            if not planned.needs_contact:
                resolved.append(planned)
                continue
            tenant = planned.row.tenant_id
            found = {
                owners[(tenant, kind, bidx)]
                for kind, forms in keys[position].items()
                for bidx in forms
                if (tenant, kind, bidx) in owners
            }
            if len(found) > 1:
                # Two contacts are one person: merged by identity.resolve, alone, once
                # the rows before it are applied; the rows after it are looked up again.
                await self._insert(session, new_contacts, new_identities)
                await self._apply(session, resolved)
                return [await self._resolve_alone(session, planned)], rows[position + 1 :]
            if found:
                [contact_id] = found
            else:
                contact_id = uuid.uuid4()
                new_contacts.append((contact_id, tenant))
                planned.created = True
            planned.contact_id = contact_id
            planned.row.contact_id = contact_id
            for kind, forms in keys[position].items():
                if any((tenant, kind, bidx) in owners for bidx in forms):
                    continue
                owners[(tenant, kind, forms[0])] = contact_id
                value = self.cipher.encrypt(
                    planned.identities[kind], context=identity_context(tenant, kind)
                )
                new_identities.append((tenant, contact_id, kind, forms[0], value, planned.source))
            resolved.append(planned)
        await self._insert(session, new_contacts, new_identities)
        return resolved, []

    async def _insert(
        self,
        session: AsyncSession,
        contacts: list[tuple[uuid.UUID, uuid.UUID]],
        identities: list[tuple[uuid.UUID, uuid.UUID, str, bytes, bytes, str]],
    ) -> None:
        await repository.insert_contacts(session, contacts)
        if await repository.insert_identities(session, identities) != len(identities):
            raise IdentityRace(
                f"{len(identities)} identities to attach, some attached meanwhile by another "
                "writer: the batch goes one by one"
            )
        contacts.clear()
        identities.clear()

    # -- effects ------------------------------------------------------------------------

    async def _apply(self, session: AsyncSession, rows: list[PlannedRow]) -> None:
        """Apply resolved rows: a few statements for all of them, their order kept."""
        if not rows:
            return
        profiles = [r.contact_id for r in rows if r.created and r.contact_id is not None]
        staff = sorted(
            {(r.row.tenant_id, r.staff) for r in rows if r.kind == "contact" and r.staff}
        )
        await repository.upsert_staff_many(session, staff)
        contact_rows = [r for r in rows if r.kind == "contact" and r.contact_id is not None]
        previous, still_followed = await self._follows(session, contact_rows)
        claims: dict[uuid.UUID, tuple[str | None, str | None]] = {}
        churned: dict[uuid.UUID, datetime] = {}
        for r in contact_rows:
            assert r.contact_id is not None
            status = FOLLOW_STATUS.get(r.change) if r.staff else None
            if status in _ADDING:
                owner, channel = claims.get(r.contact_id, (None, None))
                claims[r.contact_id] = (owner or r.staff, channel or r.state)
            if r.change == "del_follow_user":
                churned[r.contact_id] = max(r.occurred_at, churned.get(r.contact_id, r.occurred_at))
        profiles += await repository.claim_owners(
            session, [(c, owner, channel) for c, (owner, channel) in claims.items()]
        )
        await repository.churn_many(session, list(churned.items()))
        fresh = await repository.add_timeline_events(
            session, [self._timeline_entry(r) for r in rows if r.contact_id is not None]
        )
        consents = []
        outbox = BatchOutbox()
        enrich: list[PlannedRow] = []
        for r in rows:
            tenant = r.row.tenant_id
            if r.kind == "business":
                key = (tenant, r.row.source, r.event_id)
                if key not in fresh:  # on the timeline already (maybe from earlier here)
                    self.outcomes[r.row.id] = "duplicate"
                    continue
                fresh.discard(key)
                if r.event_type in ("consent.opt_in", "consent.opt_out"):
                    note = r.properties.get("note")
                    consents.append(
                        (
                            tenant,
                            r.contact_id,
                            consent_channel(r),
                            consent_status(r),
                            f"{r.row.source}:{r.event_id}"[:64],
                            None if note is None else str(note),
                        )
                    )
            elif r.kind == "contact":
                if r.contact_id is None:
                    continue
                if r.change in _ENRICHED:
                    enrich.append(r)
            effects = RowEffects(previous.get(id(r)), still_followed.get(id(r), True))
            self.publish_row(session, outbox, r, effects)
        await repository.add_consent_changes(session, consents)
        await self._schedule_enrichment(session, enrich)
        # The contacts' profiles first (created, owner or channel set), with the values
        # this batch left them with; then each row's events in row order.
        await repository.publish_profiles(session, [c for c in profiles if c is not None])
        await outbox.flush(session)

    async def _follows(
        self, session: AsyncSession, rows: list[PlannedRow]
    ) -> tuple[dict[int, str | None], dict[int, bool]]:
        """Upsert the follows the rows change (one statement), replaying the rows in order
        on the contacts' follows as stored: each row's previous status, and whether a
        deletion left the contact followed by anyone."""
        changing = [r for r in rows if r.staff and r.change in FOLLOW_STATUS]
        deleting = [r for r in rows if r.change == "del_external_contact"]
        if not changing and not deleting:
            return {}, {}
        contacts = {r.contact_id for r in changing + deleting if r.contact_id is not None}
        status: dict[uuid.UUID, dict[str, str]] = {}
        for contact_id, staff_userid, current in await repository.follow_statuses(
            session, sorted(contacts, key=str)
        ):
            status.setdefault(contact_id, {})[staff_userid] = current
        previous: dict[int, str | None] = {}
        followed: dict[int, bool] = {}
        folded: dict[tuple[uuid.UUID, uuid.UUID, str], dict[str, Any]] = {}
        for r in rows:
            if r.contact_id is None:
                continue
            of_contact = status.setdefault(r.contact_id, {})
            if r.staff and r.change in FOLLOW_STATUS:
                new = FOLLOW_STATUS[r.change]
                previous[id(r)] = of_contact.get(r.staff)
                of_contact[r.staff] = new
                adding = new in _ADDING
                values = {
                    "status": new,
                    "state": r.state if adding else None,
                    "welcome_code": r.welcome_code if adding else None,
                    "added_at": r.occurred_at if adding else None,
                    "removed_at": None if adding else r.occurred_at,
                }
                fold = folded.setdefault((r.row.tenant_id, r.contact_id, r.staff), {})
                fold.update({k: v for k, v in values.items() if v is not None})
            if r.change == "del_external_contact":
                followed[id(r)] = any(s in _ADDING for s in of_contact.values())
        await repository.upsert_follows(
            session,
            [(*pair, values) for pair, values in sorted(folded.items(), key=lambda i: str(i[0]))],
        )
        return previous, followed

    def _timeline_entry(self, r: PlannedRow) -> tuple[Any, ...]:
        if r.kind == "contact":
            return (
                r.row.tenant_id,
                r.contact_id,
                f"wecom.{r.change}",
                "wecom",
                r.row.dedupe_key,
                r.occurred_at,
                json.dumps(contact_facts(r), ensure_ascii=False),
            )
        return (
            r.row.tenant_id,
            r.contact_id,
            r.event_type,
            r.row.source,
            r.event_id,
            r.occurred_at,
            json.dumps(r.properties, ensure_ascii=False),
        )

    async def _schedule_enrichment(self, session: AsyncSession, rows: list[PlannedRow]) -> None:
        """Fetch added or edited contacts' details from WeCom soon (tenants with an app
        secret only: the others have nothing to fetch with)."""
        if not rows:
            return
        tenants = await repository.tenants_with_wecom_api(
            session, sorted({r.row.tenant_id for r in rows}, key=str)
        )
        await repository.schedule_enrichments(
            session,
            [(r.row.tenant_id, r.contact_id) for r in rows if r.row.tenant_id in tenants],
            due_at=datetime.now(UTC),
        )


def contact_identities(identities: Mapping[str, str]) -> dict[str, str]:
    """Identifiers normalised for lookups (InvalidInput for one that is not one)."""
    normalised = {kind: normalise(kind, value) for kind, value in identities.items() if value}
    if not normalised:
        raise InvalidInput("at least one contact identifier is needed")
    return normalised
