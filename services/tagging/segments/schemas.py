"""HTTP contract of segments."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

RULE_DESCRIPTION = (
    "A rule: all/any/not of conditions on tags (with min_weight), event counts in "
    "tenant-local day windows, profile fields, customer groups and other segments "
    "(README, Segments)."
)


class SegmentIn(BaseModel):
    """A dynamic segment (`rule`) or a static one (`contact_ids`)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    rule: dict[str, Any] | None = Field(default=None, description=RULE_DESCRIPTION)
    contact_ids: list[uuid.UUID] | None = Field(default=None, max_length=10_000)

    @model_validator(mode="after")
    def one_kind(self) -> SegmentIn:
        if (self.rule is None) == (self.contact_ids is None):
            raise ValueError("give either a rule (dynamic) or contact_ids (static)")
        return self


class SegmentPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=100)
    rule: dict[str, Any] | None = Field(default=None, description=RULE_DESCRIPTION)

    def changes(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump(exclude_unset=True).items() if v is not None}


class SegmentCreated(BaseModel):
    id: int
    kind: Literal["dynamic", "static"]
    status: Literal["building", "ready", "failed"]


class SegmentSummary(BaseModel):
    id: int
    name: str
    kind: Literal["dynamic", "static"]
    rule: dict[str, Any] | None
    status: Literal["building", "ready", "failed"] = Field(
        description="building (queued or running), ready (last_built_at), or failed "
        "(error, build_attempts; retried with backoff)."
    )
    error: str | None
    build_attempts: int
    last_built_at: datetime | None
    version: int
    created_at: datetime
    updated_at: datetime


class SegmentOut(SegmentSummary):
    member_count: int = Field(description="Members now (a staff key: those it owns).")


class SegmentPage(BaseModel):
    items: list[SegmentSummary]
    next_cursor: str | None


class Member(BaseModel):
    contact_id: uuid.UUID
    entered_at: datetime


class MemberPage(BaseModel):
    items: list[Member]
    next_cursor: str | None


class PreviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rule: dict[str, Any] = Field(description=RULE_DESCRIPTION)


class PreviewOut(BaseModel):
    count: int
    sample: list[uuid.UUID] = Field(description="Up to 20 of the contacts.")


class LeafOut(BaseModel):
    path: str = Field(description="Where the condition is in the rule, e.g. all[0].")
    leaf: dict[str, Any]
    holds: bool = Field(description="Whether the condition itself holds.")
    negated: bool = Field(description="Under an odd number of `not`: it must not hold.")
    value: Any = Field(description="What it saw: a weight, a count, a field's value.")
    text: str


class ExplainOut(BaseModel):
    member: bool = Field(description="Whether the rule holds for the contact now.")
    listed: bool = Field(description="Whether the contact is among the segment's members.")
    rule: dict[str, Any] | None
    leaves: list[LeafOut]


class MembersIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    contact_ids: list[uuid.UUID] = Field(min_length=1, max_length=10_000)


class MembersAdded(BaseModel):
    added: int
    already_members: int


class MembersRemoved(BaseModel):
    removed: int
    not_members: int


class RejectedRow(BaseModel):
    line: int
    reason: str


class MembersImported(BaseModel):
    rows: int
    added: int
    already_members: int
    rejected: list[RejectedRow]
