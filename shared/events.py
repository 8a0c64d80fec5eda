"""Domain events: written to the outbox with the change, delivered to subscribers after commit.

    await publish(session, "contact.added", {"contact_id": ...}, tenant_id=t)

`publish` only inserts a row in the caller's transaction; nothing reaches Redis
unless that transaction commits (the relay, `shared.relay`, does the rest).
A service declares what it consumes in its `tasks.py`:

    @subscribe("points", "order.paid")
    async def award_order_points(session: AsyncSession, event: Event) -> None: ...

Each (event, handler) pair runs at most once to completion (`processed_events`).
"""

from __future__ import annotations

import functools
import importlib
import json
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncSession

from shared.models import OutboxEvent

SERVICES = ("users", "tagging", "campaigns", "points")
NOTIFY_CHANNEL = "scrm_outbox"
# Integrations' events stored for the users worker (services/users/ingest.py, consumer.py).
INBOUND_CHANNEL = "scrm_inbound"


@dataclass(frozen=True)
class Event:
    """An event as a consumer sees it."""

    id: int
    event_id: uuid.UUID
    type: str
    tenant_id: uuid.UUID | None
    payload: Mapping[str, Any]
    created_at: datetime


EventHandler = Callable[[AsyncSession, Event], Awaitable[None]]
# A handler of many events at once (set-based): called with up to MANY_BATCH_SIZE
# events in one transaction, in outbox order, or with one event when retried alone.
BatchEventHandler = Callable[[AsyncSession, list[Event]], Awaitable[None]]


@dataclass(frozen=True)
class Subscription:
    service: str
    name: str
    event_types: frozenset[str]
    handler: EventHandler
    # Batch delivery runs many events in one transaction: fastest for small
    # handlers, but a handler that touches rows shared between events (and
    # runs many statements) should take one short transaction per event.
    batch: bool = True
    # Set for handlers registered with `subscribe_many`: `handler` then calls it
    # with one event.
    many: BatchEventHandler | None = None
    # A set-based handler that takes turns per tenant (`subscribe_many(gather=True)`):
    # one batch of a tenant at a time, and the batch whose turn it is takes the
    # tenant's other events waiting for the handler with it (shared/worker.py).
    gather: bool = False
    # SQL over the outbox row `o`: whether the handler has anything to do with the event
    # now (`subscribe_many(interest=...)`). Events it has not are neither enqueued,
    # loaded nor handed to it.
    interest: str | None = None

    def consumes(self, event_type: str) -> bool:
        """An exact type, or a family such as `custom.*` (every `custom.<name>`)."""
        if event_type in self.event_types:
            return True
        return any(t.endswith(".*") and event_type.startswith(t[:-1]) for t in self.event_types)


@dataclass
class SubscriptionRegistry:
    """Which handler of which service consumes which event types."""

    _by_name: dict[str, Subscription] = field(default_factory=dict)
    # Bumped by every (un)subscription; what services_for and handlers remember is
    # for one version.
    _version: int = 0
    _services_version: int = 0
    _services_for: dict[str, set[str]] = field(default_factory=dict)
    _handlers: dict[tuple[str, str], list[Subscription]] = field(default_factory=dict)

    def subscribe(
        self, service: str, *event_types: str, name: str | None = None, batch: bool = True
    ) -> Callable[[EventHandler], EventHandler]:
        if service not in SERVICES:
            raise ValueError(f"unknown service {service!r}")
        if not event_types:
            raise ValueError("subscribe to at least one event type")

        def register(handler: EventHandler) -> EventHandler:
            handler_name = name or f"{service}.{handler.__name__}"
            existing = self._by_name.get(handler_name)
            if existing is not None and existing.handler is not handler:
                raise ValueError(f"handler name {handler_name!r} is already taken")
            self._by_name[handler_name] = Subscription(
                service, handler_name, frozenset(event_types), handler, batch
            )
            self._version += 1
            return handler

        return register

    def subscribe_many(
        self,
        service: str,
        *event_types: str,
        name: str | None = None,
        gather: bool = False,
        interest: str | None = None,
    ) -> Callable[[BatchEventHandler], BatchEventHandler]:
        """Register a set-based handler: it gets a list of events (in outbox order)
        and applies them in the caller's transaction, with a few statements per
        batch rather than per event.

        With `gather`, batches of one tenant take turns, and each takes the tenant's
        events already waiting for the handler along (up to MANY_BATCH_SIZE): for a
        handler whose batches share rows (a contact's events), which side by side
        would wait on each other's locks, and whose cost is mostly per batch.

        `interest` is an SQL condition on the outbox row `o` (its tenant_id, type,
        payload) saying whether the handler has anything to do with the event at the
        time it is published (a journey listening for it, say): events it has not are
        neither enqueued nor loaded, and nothing is written for them. The relay, the
        worker and the redelivery sweep each ask it, so it must not turn true for an
        event after the fact (compare the event's `o.created_at` with when the
        listener started). Deciding it then is what the handler would do itself, only
        without the cost of each event."""
        if service not in SERVICES:
            raise ValueError(f"unknown service {service!r}")
        if not event_types:
            raise ValueError("subscribe to at least one event type")

        def register(many: BatchEventHandler) -> BatchEventHandler:
            handler_name = name or f"{service}.{many.__name__}"
            existing = self._by_name.get(handler_name)
            if existing is not None and existing.many is not many:
                raise ValueError(f"handler name {handler_name!r} is already taken")

            @functools.wraps(many)
            async def one(session: AsyncSession, event: Event) -> None:
                await many(session, [event])

            self._by_name[handler_name] = Subscription(
                service, handler_name, frozenset(event_types), one, True, many, gather, interest
            )
            self._version += 1
            return many

        return register

    def unsubscribe(self, name: str) -> None:
        self._by_name.pop(name, None)
        self._version += 1

    def get(self, name: str) -> Subscription | None:
        return self._by_name.get(name)

    def handlers(self, service: str, event_type: str) -> list[Subscription]:
        # Asked for every event a worker delivers: remembered like services_for.
        self._forget_if_changed()
        found = self._handlers.get((service, event_type))
        if found is None:
            found = [
                sub
                for sub in self._by_name.values()
                if sub.service == service and sub.consumes(event_type)
            ]
            self._handlers[(service, event_type)] = found
        return list(found)

    def _forget_if_changed(self) -> None:
        if self._version != self._services_version:
            self._services_for.clear()
            self._handlers.clear()
            self._services_version = self._version

    def services_for(self, event_type: str) -> set[str]:
        # Asked for every event the relay publishes: remembered per type until the
        # subscriptions change.
        self._forget_if_changed()
        found = self._services_for.get(event_type)
        if found is None:
            found = {sub.service for sub in self._by_name.values() if sub.consumes(event_type)}
            self._services_for[event_type] = found
        return set(found)

    def all(self) -> list[Subscription]:
        return list(self._by_name.values())


registry = SubscriptionRegistry()
subscribe = registry.subscribe
subscribe_many = registry.subscribe_many


def load_subscriptions(
    services: Iterable[str] = SERVICES, extra_modules: str = ""
) -> SubscriptionRegistry:
    """Import each service's tasks module (and any extra handler modules, comma-separated)
    so their `@subscribe` handlers and scheduled jobs register."""
    for service in services:
        importlib.import_module(f"services.{service}.tasks")
    for module in filter(None, (m.strip() for m in extra_modules.split(","))):
        importlib.import_module(module)
    return registry


async def publish(
    session: AsyncSession,
    event_type: str,
    payload: Mapping[str, Any],
    *,
    tenant_id: uuid.UUID | None,
) -> uuid.UUID:
    """Record an event in the caller's transaction; it is delivered only if that commits."""
    event_id = uuid.uuid4()
    await session.execute(
        insert(OutboxEvent).values(
            event_id=event_id, tenant_id=tenant_id, type=event_type, payload=dict(payload)
        )
    )
    await notify_relay(session)
    return event_id


async def publish_many(
    session: AsyncSession,
    events: Iterable[tuple[str, Mapping[str, Any], uuid.UUID | None]],
) -> list[uuid.UUID]:
    """Bulk `publish` for set-based paths (imports, batches): one multi-row INSERT."""
    ids: list[uuid.UUID] = []
    tenants: list[str | None] = []
    kinds: list[str] = []
    payloads: list[str] = []
    for kind, payload, tenant in events:
        ids.append(uuid.uuid4())
        tenants.append(str(tenant) if tenant is not None else None)
        kinds.append(kind)
        payloads.append(json.dumps(dict(payload)))
    if not ids:
        return []
    await session.execute(
        _PUBLISH_MANY,
        {"ids": [str(i) for i in ids], "tenants": tenants, "types": kinds, "payloads": payloads},
    )
    await notify_relay(session)
    return ids


# Rows in the order given, so their ids (the delivery order) follow it.
_PUBLISH_MANY = text(
    """
    INSERT INTO outbox_events (event_id, tenant_id, type, payload)
    SELECT e, t, k, CAST(p AS jsonb)
      FROM unnest(CAST(:ids AS uuid[]), CAST(:tenants AS uuid[]), CAST(:types AS text[]),
                  CAST(:payloads AS text[])) WITH ORDINALITY AS u(e, t, k, p, n)
     ORDER BY n
    """
)


async def notify_relay(session: AsyncSession) -> None:
    """Wake the outbox relay when this transaction commits (for code that inserts
    into outbox_events with SQL of its own)."""
    # NOTIFY is transactional: the relay wakes only when the events are committed.
    # Postgres folds repeats within a transaction, but each costs a round trip,
    # so send it once per transaction.
    transaction = session.get_transaction()
    if transaction is not None and session.info.get("outbox_notified") is transaction:
        return
    await session.execute(text(f"NOTIFY {NOTIFY_CHANNEL}"))
    session.info["outbox_notified"] = transaction
