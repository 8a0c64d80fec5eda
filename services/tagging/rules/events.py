"""Event types the tagging service's rules part publishes (see shared/catalog.py)."""

from __future__ import annotations

from shared.catalog import EventType

EVENTS: list[EventType] = []
