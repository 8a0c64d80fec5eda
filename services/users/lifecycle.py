"""Contacts' lifecycle stages follow the tagging service, which computes them from
behaviour and publishes `contact.lifecycle_changed` {contact_id, from, to, since, reason}.

The stage is kept on the contact (`GET /v1/contacts?lifecycle_stage=...` filters on
it) with the time it took effect: a change older than the one stored is stale
(events of one contact may arrive out of order) and is ignored, as are changes of
contacts that are unknown, merged or erased.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime

from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from services.users import repository
from shared.events import Event

LIFECYCLE_CHANGED = "contact.lifecycle_changed"

log = logging.getLogger("scrm.users.lifecycle")


class _StageChange(BaseModel):
    contact_id: uuid.UUID
    to: str
    since: datetime  # UTC when it names no offset


async def follow(session: AsyncSession, events: list[Event]) -> int:
    """Apply a batch of `contact.lifecycle_changed` events in one statement; returns how
    many contacts changed stage. An event that names no known stage is logged and left."""
    changes: list[tuple[uuid.UUID, uuid.UUID, str, datetime]] = []
    for event in events:
        try:
            change = _StageChange.model_validate(dict(event.payload))
        except ValidationError as exc:
            log.warning("lifecycle change %s is not one: %s", event.event_id, exc)
            continue
        if event.tenant_id is None or change.to not in repository.LIFECYCLE_STAGES:
            log.warning(
                "lifecycle change %s ignored: stage %r, tenant %s",
                event.event_id,
                change.to,
                event.tenant_id,
            )
            continue
        since = change.since if change.since.tzinfo else change.since.replace(tzinfo=UTC)
        changes.append((event.tenant_id, change.contact_id, change.to, since))
    return await repository.follow_lifecycle(session, changes)
