"""The campaigns service's event types (see shared/catalog.py): none published yet.

When it publishes one, declare it here as an `EventType` with a pydantic model of
its payload and an example; the catalog test fails on a type published or
subscribed anywhere without its entry.
"""

from __future__ import annotations

from shared.catalog import EventType

EVENTS: list[EventType] = []
