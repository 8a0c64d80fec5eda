"""HTTP contract of the enrolment part."""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_LISTED = 10_000


class EnrolIn(BaseModel):
    """A manual launch: a segment's members as they are now, or a list of contacts."""

    model_config = ConfigDict(extra="forbid")

    segment_id: int | None = Field(default=None, ge=1, le=2**63 - 1)
    contact_ids: list[uuid.UUID] | None = Field(default=None, min_length=1, max_length=MAX_LISTED)

    @model_validator(mode="after")
    def one_source(self) -> EnrolIn:
        if (self.segment_id is None) == (self.contact_ids is None):
            raise ValueError("give either a segment_id or contact_ids")
        return self


class Skipped(BaseModel):
    contact_id: uuid.UUID
    reason: Literal["missing", "erased"]


class EnrolOut(BaseModel):
    enrolled: int = Field(description="Contacts who entered the journey's current version.")
    reentry_refused: int | None = Field(
        description="Listed contacts the re-entry policy kept out (they entered before); "
        "null for a segment."
    )
    skipped: list[Skipped] = Field(description="Listed contacts that are not live contacts.")
