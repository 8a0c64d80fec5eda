"""Event types the tagging service's segments part publishes (see shared/catalog.py)."""

from __future__ import annotations

import uuid

from pydantic import AwareDatetime, BaseModel, ConfigDict

from shared.catalog import EventType


class SegmentEntered(BaseModel):
    """The contact entered the segment: its rule came to hold (a behaviour, a profile
    change, a build), or an operator listed it in a static segment."""

    model_config = ConfigDict(extra="forbid")

    segment_id: int
    contact_id: uuid.UUID
    occurred_at: AwareDatetime


class SegmentLeft(BaseModel):
    """The contact left the segment: its rule stopped holding (a behaviour, time leaving
    a window, a decayed tag, a build), it was merged or erased, or it was taken off a
    static segment."""

    model_config = ConfigDict(extra="forbid")

    segment_id: int
    contact_id: uuid.UUID
    occurred_at: AwareDatetime


def _describe(model: type[BaseModel]) -> str:
    return " ".join((model.__doc__ or "").split())


_EXAMPLE = {
    "segment_id": 12,
    "contact_id": "5d0c6c57-9b9a-4a7e-8d35-3f0b5f4f2b11",
    "occurred_at": "2026-11-20T10:31:00+08:00",
}

EVENTS: list[EventType] = [
    EventType(
        name="segment.entered",
        direction="domain",
        service="tagging",
        description=_describe(SegmentEntered),
        model=SegmentEntered,
        example=_EXAMPLE,
    ),
    EventType(
        name="segment.left",
        direction="domain",
        service="tagging",
        description=_describe(SegmentLeft),
        model=SegmentLeft,
        example=_EXAMPLE,
    ),
]
