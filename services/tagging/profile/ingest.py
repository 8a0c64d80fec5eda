"""The read model, fed by events: profiles, event counts by day, events with their
properties, customer-group memberships, consent and points tier; merges and erasure.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from services.tagging.facts import Changes
from shared.events import Event


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


async def apply(
    session: AsyncSession, events: list[Event], changes: Changes, now: datetime
) -> list[AppliedEvent]:
    """Record the batch in the read model; returns the business events applied (each
    once: an event already recorded is not returned again)."""
    return []
