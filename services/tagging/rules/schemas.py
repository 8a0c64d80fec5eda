"""HTTP contract of tag rules: what a rule is, its patch, the dry-run's answer."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    model_validator,
)

MAX_WEIGHT = 10_000.0
MAX_COUNT = 1_000
MAX_WINDOW_DAYS = 365
MAX_CONDITIONS = 10
MAX_VALUE = 200
# A derived tag's name is the property's value: at most this long (tags.name).
MAX_TAG_NAME = 30
DRY_RUN_SAMPLE = 20

RuleName = Annotated[str, Field(min_length=1, max_length=100)]
EventTypeName = Annotated[str, Field(min_length=1, max_length=100)]
PropertyName = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[^\s]+$")]
Weight = Annotated[
    float,
    Field(strict=True, gt=0, le=MAX_WEIGHT, allow_inf_nan=False, description="Tag weight units."),
]
MinCount = Annotated[int, Field(strict=True, ge=1, le=MAX_COUNT)]
WindowDays = Annotated[int, Field(strict=True, ge=1, le=MAX_WINDOW_DAYS)]
PropertyValue = (
    Annotated[StrictStr, Field(max_length=MAX_VALUE)]
    | StrictBool
    | StrictInt
    | Annotated[StrictFloat, Field(allow_inf_nan=False)]
)
Where = Annotated[
    dict[PropertyName, PropertyValue],
    Field(
        max_length=MAX_CONDITIONS,
        description='Equality on the event\'s properties, e.g. {"category": "tea"}.',
    ),
]
RuleStatus = Literal["active", "paused"]
RuleAction = Literal["raise", "set"]
DbRef = Annotated[int, Field(ge=1, le=2**63 - 1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FixedTag(_Strict):
    """Always the same tag."""

    tag_id: DbRef


class TagFromProperty(_Strict):
    """The tag of `group_id` named after the event's `from_property` (created on first
    use; a value that is not text, empty or longer than 30 characters is skipped)."""

    group_id: DbRef
    from_property: PropertyName


Target = FixedTag | TagFromProperty


def _check_shape(min_count: int, window_days: int | None, action: str, cap: float | None) -> None:
    if min_count > 1 and window_days is None:
        raise ValueError("min_count above 1 needs window_days (the events are counted in it)")
    if action == "set" and cap is not None:
        raise ValueError("cap applies to raise only (set stores weight as it is)")


class RuleIn(_Strict):
    """When `event_type` (with `where`) happened at least `min_count` times within
    `window_days`, `raise` the target tag by `weight` (never above `cap`) or `set` it to
    `weight`. It fires on every qualifying event once the count is met."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "Interest from views",
                    "event_type": "product.view",
                    "min_count": 3,
                    "window_days": 7,
                    "weight": 10,
                    "cap": 100,
                    "target": {"group_id": 3, "from_property": "category"},
                },
                {
                    "name": "Tea buyers",
                    "event_type": "order.paid",
                    "where": {"category": "tea"},
                    "action": "set",
                    "weight": 50,
                    "target": {"tag_id": 12},
                },
            ]
        },
    )

    name: RuleName
    event_type: EventTypeName = Field(
        description="A business event type (order.paid, product.view, share, ...), "
        "referral.succeeded (its inviter is tagged) or custom.<name>."
    )
    where: Where = {}
    min_count: MinCount = 1
    window_days: WindowDays | None = None
    action: RuleAction = "raise"
    weight: Weight
    cap: Weight | None = None
    target: Target
    status: RuleStatus = "active"


class RulePatch(_Strict):
    """Fields to change (the result is checked as a whole rule); `window_days` and
    `cap` may be set to null."""

    name: RuleName | None = None
    event_type: EventTypeName | None = None
    where: Where | None = None
    min_count: MinCount | None = None
    window_days: WindowDays | None = None
    action: RuleAction | None = None
    weight: Weight | None = None
    cap: Weight | None = None
    target: Target | None = None
    status: RuleStatus | None = None

    @model_validator(mode="after")
    def _something(self) -> RulePatch:
        if not self.model_fields_set:
            raise ValueError("send at least one field to change")
        nullable = {"window_days", "cap"}
        for name in self.model_fields_set - nullable:
            if getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null")
        return self

    def apply_to(self, rule: RuleIn) -> dict[str, Any]:
        """The whole rule with the patch applied, as a RuleIn would take it."""
        merged = rule.model_dump()
        for name in self.model_fields_set:
            value = getattr(self, name)
            merged[name] = value.model_dump() if isinstance(value, BaseModel) else value
        return merged


class RuleOut(BaseModel):
    id: int
    name: str
    event_type: str
    where: dict[str, Any]
    min_count: int
    window_days: int | None
    action: RuleAction
    weight: float
    cap: float | None
    target: dict[str, Any] = Field(description='{"tag_id"} or {"group_id", "from_property"}.')
    status: RuleStatus
    default_key: str | None = Field(
        description="Set on a default rule (SPEC §2) installed for the tenant."
    )
    created_at: datetime
    updated_at: datetime


class RuleCreated(BaseModel):
    id: int


class RulePage(BaseModel):
    items: list[RuleOut]
    next_cursor: str | None


class DryRun(BaseModel):
    """How many live contacts the rule would tag now: those with at least `min_count`
    qualifying events in the last `window_days` (per property value for a derived
    tag), and some of them."""

    contacts: int
    sample: list[uuid.UUID] = Field(
        description=f"Up to {DRY_RUN_SAMPLE} of the contacts' ids, in id order."
    )


class FiringOut(BaseModel):
    """The rule fired on a source event (or skipped it, with why: property_missing,
    property_not_text, tag_name_empty, tag_name_too_long, tag_not_created)."""

    id: int
    source_event_id: uuid.UUID = Field(description="The outbox event it came from.")
    contact_id: uuid.UUID
    tag_id: int | None = Field(description="The tag written; null when skipped.")
    outcome: Literal["fired", "skipped"]
    reason: str | None
    fired_at: datetime


class FiringPage(BaseModel):
    items: list[FiringOut]
    next_cursor: str | None
