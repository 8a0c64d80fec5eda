"""Event types the tagging service's profile part publishes (see shared/catalog.py)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.catalog import EventType

Stage = Literal["potential", "new", "active", "silent", "churned"]


class ContactLifecycleChanged(BaseModel):
    """The contact's lifecycle stage changed (potential, new, active, silent, churned),
    on an event of theirs or with the passage of time."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    contact_id: uuid.UUID
    from_stage: Stage = Field(alias="from")
    to_stage: Stage = Field(alias="to")
    since: datetime = Field(description="When the new stage began.")
    reason: Literal[
        "never_ordered", "first_order", "recent_activity", "inactive", "deleted_by_contact"
    ] = Field(description="The rule that gave the new stage.")


EVENTS: list[EventType] = [
    EventType(
        name="contact.lifecycle_changed",
        direction="domain",
        service="tagging",
        description=" ".join((ContactLifecycleChanged.__doc__ or "").split()),
        model=ContactLifecycleChanged,
        example={
            "contact_id": "5d0c6c57-9b9a-4a7e-8d35-3f0b5f4f2b11",
            "from": "active",
            "to": "silent",
            "since": "2026-12-20T10:31:00+08:00",
            "reason": "inactive",
        },
    )
]
