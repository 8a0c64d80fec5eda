"""The campaigns service's event types (see shared/catalog.py): the actions of journey
steps that another service applies.

Each carries a `key` unique to the step run that asked for it (`<enrolment>:<step>:
<seq>`), which the applying service keys its own write on: a step run twice (a
redelivery) tags or awards once.
"""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.catalog import EventType


class CampaignTagRequested(BaseModel):
    """A journey's add_tag or remove_tag step: the tagging service applies it (source
    `campaign`)."""

    model_config = ConfigDict(extra="forbid")

    contact_id: uuid.UUID
    tag_id: int
    action: Literal["add", "remove"]
    weight: float | None = None
    campaign_id: int
    step_id: str
    key: str


class CampaignPointsAwarded(BaseModel):
    """A journey's award_points step: the points service books the points once per
    `key` (rule `campaign`)."""

    model_config = ConfigDict(extra="forbid")

    contact_id: uuid.UUID
    points: int = Field(ge=1)
    reason: str
    campaign_id: int
    step_id: str
    key: str


_CONTACT = "5d0c6c57-9b9a-4a7e-8d35-3f0b5f4f2b11"


def _describe(model: type[BaseModel]) -> str:
    return " ".join((model.__doc__ or "").split())


EVENTS: list[EventType] = [
    EventType(
        name="campaign.tag_requested",
        direction="domain",
        service="campaigns",
        description=_describe(CampaignTagRequested),
        model=CampaignTagRequested,
        example={
            "contact_id": _CONTACT,
            "tag_id": 12,
            "action": "add",
            "weight": None,
            "campaign_id": 3,
            "step_id": "s4",
            "key": "981:s4:3",
        },
    ),
    EventType(
        name="campaign.points_awarded",
        direction="domain",
        service="campaigns",
        description=_describe(CampaignPointsAwarded),
        model=CampaignPointsAwarded,
        example={
            "contact_id": _CONTACT,
            "points": 50,
            "reason": "welcome gift",
            "campaign_id": 3,
            "step_id": "s5",
            "key": "981:s5:4",
        },
    ),
]
