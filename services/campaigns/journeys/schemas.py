"""HTTP contract of the journeys part."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Status = Literal["draft", "live", "paused", "stopped"]

TRIGGER_DESCRIPTION = (
    '`{"type": T, ...}` with T one of contact.added (optional `states`: the channel '
    "codes' State values), group.joined (optional `chat_ids`), tag.added / tag.removed "
    "(`tag_id`), segment.entered / segment.left (`segment_id`), event (`event_type`, "
    "optional `where`), schedule (`cron`: 5 fields in the tenant's time zone, "
    "`segment_id`), manual (ops enrol a segment or a list)."
)
STEPS_DESCRIPTION = (
    "The first step is the entry; a step without `next` ends the journey. Each step has "
    'an `id` and a `type`: wait (`seconds`, `days` or `until` "HH:MM"), wait_for '
    "(`event`, `where`, `timeout` {seconds|days}, `on_event`, `on_timeout`), condition "
    "(`rule`: a segment rule, `yes`, `no`), split (`variants` [{name, weight, next}], "
    "`holdout` share), action (`action`: send with `channel` and `content.text`, "
    "add_tag / remove_tag with `tag_id`, award_points with `points`, create_task with "
    "`title`, call_webhook with `url`), exit. Templates may use {{name}}, "
    "{{points_balance}}, {{expiring_points}}, {{expiring_at}}, {{coupon}}."
)


class CampaignIn(BaseModel):
    """A journey: checked when saved (422 `invalid_journey` names the failing path in
    `details.path`; nothing is saved)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    trigger: dict[str, Any] = Field(description=TRIGGER_DESCRIPTION)
    steps: list[dict[str, Any]] = Field(max_length=200, description=STEPS_DESCRIPTION)
    reentry: dict[str, Any] | None = Field(
        default=None,
        description='`{"policy": "once"}` (default), `{"policy": "once_per_days", "days": N}` '
        'or `{"policy": "every_time"}`.',
    )
    goals: list[dict[str, Any]] | None = Field(
        default=None,
        description="Events that end the journey for the contact and count as a conversion: "
        '`[{"event": "order.paid", "where": {...}}]`.',
    )
    when_lost: Literal["exit", "stay"] | None = Field(
        default=None, description="A contact who deleted the staff (default exit)."
    )
    when_opted_out: Literal["skip", "exit"] | None = Field(
        default=None,
        description="A contact opted out of a step's channel: skip that send (default) or exit.",
    )

    def definition(self) -> dict[str, Any]:
        return self.model_dump(exclude={"name"}, exclude_none=True)


class CampaignCreated(BaseModel):
    id: int
    version: int
    status: Status


class CampaignSummary(BaseModel):
    id: int
    name: str
    status: Status
    version: int = Field(description="The current version: new enrolments take it.")
    trigger_type: str
    updated_at: datetime


class CampaignPage(BaseModel):
    items: list[CampaignSummary]
    next_cursor: str | None


class VersionRef(BaseModel):
    version: int
    created_at: datetime


class CampaignOut(CampaignSummary):
    """The campaign and its current version's definition, as checked and stored."""

    trigger: dict[str, Any]
    steps: list[dict[str, Any]]
    reentry: dict[str, Any]
    goals: list[dict[str, Any]]
    when_lost: Literal["exit", "stay"]
    when_opted_out: Literal["skip", "exit"]
    versions: list[VersionRef]
    created_at: datetime
    launched_at: datetime | None
    paused_at: datetime | None
    stopped_at: datetime | None


class VersionOut(BaseModel):
    version: int
    created_at: datetime
    trigger: dict[str, Any]
    steps: list[dict[str, Any]]
    reentry: dict[str, Any]
    goals: list[dict[str, Any]]
    when_lost: Literal["exit", "stay"]
    when_opted_out: Literal["skip", "exit"]


class CampaignStatusOut(BaseModel):
    id: int
    status: Status
    version: int
    launched_at: datetime | None
    paused_at: datetime | None
    stopped_at: datetime | None


class MigrateIn(BaseModel):
    """Contacts enrolled on earlier versions move to the current one."""

    model_config = ConfigDict(extra="forbid")

    from_version: int | None = Field(
        default=None, ge=1, le=2**31 - 1, description="Only this version's (default: all earlier)."
    )
    steps: dict[str, str] = Field(
        default_factory=dict,
        max_length=200,
        description="Old step id -> the current version's step to move to; a step not "
        "named keeps its id, which the current version must have.",
    )


class MigrateOut(BaseModel):
    migrated: int
    version: int
    by_step: dict[str, int] = Field(description="Moved contacts by the step they are at now.")
