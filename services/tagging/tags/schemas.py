"""HTTP contract of tag groups, tags, the tags on contacts and bulk tagging."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    model_validator,
)

from shared.params import INT64_MAX

MAX_WEIGHT = 1_000_000.0
# The smallest weight and non-zero floor: decayed weights and their ratios stay far
# from what double precision cannot hold.
MIN_WEIGHT = 0.000_001
MAX_HALF_LIFE_DAYS = 36_500.0
MIN_HALF_LIFE_DAYS = 0.000_1  # about 9 seconds
MAX_BULK_CONTACTS = 100_000

GroupKind = Literal["basic", "consumption", "engagement", "interest", "custom"]
Name = Annotated[
    str, StringConstraints(strict=True, strip_whitespace=True, min_length=1, max_length=30)
]
HalfLife = Annotated[
    float, Field(strict=True, ge=MIN_HALF_LIFE_DAYS, le=MAX_HALF_LIFE_DAYS, allow_inf_nan=False)
]


def _no_tiny_floor(value: float) -> float:
    if 0 < value < MIN_WEIGHT:
        raise ValueError(f"a floor is 0 or at least {MIN_WEIGHT}")
    return value


Floor = Annotated[
    float,
    Field(strict=True, ge=0, le=MAX_WEIGHT, allow_inf_nan=False),
    AfterValidator(_no_tiny_floor),
]
Weight = Annotated[float, Field(strict=True, ge=MIN_WEIGHT, le=MAX_WEIGHT, allow_inf_nan=False)]
Id = Annotated[int, Field(strict=True, ge=1, le=INT64_MAX)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TagGroupIn(_Strict):
    """A tag group: `half_life_days` null = its tags do not decay; a decaying tag whose
    weight falls below `floor` drops off."""

    name: Name
    half_life_days: HalfLife | None
    floor: Floor
    kind: GroupKind = "custom"
    exclusive: StrictBool = Field(
        default=False, description="A contact holds at most one of the group's tags."
    )
    decay_manual: StrictBool = Field(
        default=False, description="Tags set by hand decay too (by default they do not)."
    )
    mirror_to_wecom: StrictBool = False


class TagGroupPatch(_Strict):
    """Fields to change. A new half-life, floor or decay_manual applies to the tags
    contacts hold from now on (their current weight decays at the new rate)."""

    name: Name | None = None
    half_life_days: HalfLife | None = None
    floor: Floor | None = None
    kind: GroupKind | None = None
    exclusive: StrictBool | None = None
    decay_manual: StrictBool | None = None
    mirror_to_wecom: StrictBool | None = None

    @model_validator(mode="after")
    def _only_half_life_nullable(self) -> TagGroupPatch:
        for name in self.model_fields_set - {"half_life_days"}:
            if getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null")
        return self

    def changes(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.model_fields_set}


class TagGroupOut(BaseModel):
    id: int
    name: str
    kind: GroupKind
    half_life_days: float | None
    floor: float
    exclusive: bool
    decay_manual: bool
    mirror_to_wecom: bool
    wecom_group_id: str | None
    tag_count: int
    created_at: datetime
    updated_at: datetime


class TagGroupList(BaseModel):
    items: list[TagGroupOut]


class Created(BaseModel):
    id: int


class TagIn(_Strict):
    group_id: Id
    name: Name


class TagPatch(_Strict):
    name: Name


class TagOut(BaseModel):
    id: int
    group_id: int
    group: str
    name: str
    wecom_tag_id: str | None
    created_at: datetime
    updated_at: datetime


class TagPage(BaseModel):
    items: list[TagOut]
    next_cursor: str | None


class ContactTagIn(_Strict):
    """Tag the contact by hand. With `weight`, a tag it holds gets that weight; without,
    a new tag gets weight 1 and a held one stays as it is."""

    tag_id: Id
    weight: Weight | None = None


class TagHistoryOut(BaseModel):
    action: str = Field(description="added, raised, set or removed.")
    weight: float | None
    source: str
    cause: dict[str, Any]
    at: datetime


class ContactTagOut(BaseModel):
    tag_id: int
    tag: str
    group_id: int
    group: str
    weight: float = Field(description="The current (decayed) weight.")
    source: str
    first_raised_at: datetime
    last_raised_at: datetime
    history: list[TagHistoryOut] | None = Field(
        default=None, description="With ?history=true: its changes, oldest first."
    )


class ContactTagsOut(BaseModel):
    items: list[ContactTagOut]


class _Audience(_Strict):
    contact_ids: Annotated[
        list[uuid.UUID] | None, Field(min_length=1, max_length=MAX_BULK_CONTACTS)
    ] = None
    segment_id: Id | None = None

    @model_validator(mode="after")
    def _one_audience(self) -> _Audience:
        if (self.contact_ids is None) == (self.segment_id is None):
            raise ValueError("give either contact_ids or segment_id")
        return self


class BulkTagIn(_Audience):
    """The contacts to tag (up to 100,000 ids, or a segment's members). With `weight`,
    those holding the tag get that weight; without, new holders get weight 1."""

    weight: Weight | None = None


class BulkUntagIn(_Audience):
    """The contacts to untag (up to 100,000 ids, or a segment's members)."""


class BulkResult(BaseModel):
    added: int
    updated: int
    removed: int
    unchanged: int
    unknown: list[uuid.UUID] = Field(
        description="Contact ids the tagging service does not know as live contacts."
    )


class RejectedRow(BaseModel):
    line: int
    reason: str


class TagHolderOut(BaseModel):
    contact_id: uuid.UUID
    weight: float = Field(description="The current (decayed) weight.")
    source: str
    first_raised_at: datetime
    last_raised_at: datetime


class TagHolderPage(BaseModel):
    items: list[TagHolderOut]
    next_cursor: uuid.UUID | None
