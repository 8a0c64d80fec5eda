"""Event types the tagging service's tags part publishes (see shared/catalog.py)."""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from shared.catalog import EventType

Source = Literal["manual", "rule", "import", "wecom", "campaign"]
RemovalReason = Literal[
    "manual", "decayed", "exclusive", "erased", "merged", "wecom", "rule", "deleted"
]


class TagAdded(BaseModel):
    """A contact got a tag it did not hold (by hand, a tag rule, an import, WeCom, or a
    merge bringing the merged contact's tag to the survivor)."""

    model_config = ConfigDict(extra="forbid")

    contact_id: uuid.UUID
    tag_id: int
    group_id: int
    weight: float = Field(description="Its weight when added.")
    source: Source
    occurred_at: AwareDatetime


class TagRemoved(BaseModel):
    """A contact no longer holds a tag: removed by hand or by WeCom, decayed below its
    group's floor, replaced in an exclusive group, the contact erased or merged, or
    the tag deleted."""

    model_config = ConfigDict(extra="forbid")

    contact_id: uuid.UUID
    tag_id: int
    group_id: int
    reason: RemovalReason
    occurred_at: AwareDatetime


class TagWeightChanged(BaseModel):
    """The weight (or source) of a tag a contact holds was set or raised; `from` is its
    decayed weight just before."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    contact_id: uuid.UUID
    tag_id: int
    group_id: int
    from_weight: float = Field(alias="from")
    to_weight: float = Field(alias="to")
    source: Source
    occurred_at: AwareDatetime


_CONTACT = "5d0c6c57-9b9a-4a7e-8d35-3f0b5f4f2b11"
_AT = "2026-11-20T10:31:00+08:00"


def _describe(model: type[BaseModel]) -> str:
    return " ".join((model.__doc__ or "").split())


EVENTS: list[EventType] = [
    EventType(
        name="tag.added",
        direction="domain",
        service="tagging",
        description=_describe(TagAdded),
        model=TagAdded,
        example={
            "contact_id": _CONTACT,
            "tag_id": 12,
            "group_id": 3,
            "weight": 10.0,
            "source": "rule",
            "occurred_at": _AT,
        },
    ),
    EventType(
        name="tag.removed",
        direction="domain",
        service="tagging",
        description=_describe(TagRemoved),
        model=TagRemoved,
        example={
            "contact_id": _CONTACT,
            "tag_id": 12,
            "group_id": 3,
            "reason": "decayed",
            "occurred_at": _AT,
        },
    ),
    EventType(
        name="tag.weight_changed",
        direction="domain",
        service="tagging",
        description=_describe(TagWeightChanged),
        model=TagWeightChanged,
        example={
            "contact_id": _CONTACT,
            "tag_id": 12,
            "group_id": 3,
            "from": 18.5,
            "to": 28.5,
            "source": "rule",
            "occurred_at": _AT,
        },
    ),
]
