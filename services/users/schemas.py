"""HTTP contract of the users service."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.service_status import ServiceStatus

EVENT_TYPES = (
    "order.paid",
    "order.refunded",
    "checkin",
    "comment",
    "page.view",
    "product.view",
    "cart.add",
    "share",
    "live.watch",
    "consent.opt_in",
    "consent.opt_out",
)
_CUSTOM_TYPE = re.compile(r"^custom\.[a-z0-9_]+(\.[a-z0-9_]+)*$")
# Integer amounts in fen, never floats: what each documented type must carry.
_REQUIRED_PROPERTIES: dict[str, dict[str, type]] = {
    "order.paid": {"order_id": str, "amount_fen": int},
    "order.refunded": {"order_id": str, "refund_fen": int},
    "product.view": {"product_id": str},
    "cart.add": {"product_id": str},
    "live.watch": {"live_id": str},
    "consent.opt_in": {"channel": str},
    "consent.opt_out": {"channel": str},
}
MAX_BATCH = 1000


class UsersStatus(ServiceStatus):
    """Bus status of the users service for one tenant."""

    inbound_pending: int = Field(
        description="Callbacks and webhook events stored and not yet applied "
        "(dead letters aside: see dead_letters)"
    )


class ContactRef(BaseModel):
    """The identifiers an event knows its contact by (at least one)."""

    model_config = ConfigDict(extra="forbid")

    external_userid: str | None = Field(default=None, max_length=200)
    unionid: str | None = Field(default=None, max_length=200)
    openid: str | None = Field(default=None, max_length=200)
    phone: str | None = Field(default=None, max_length=40)
    shop_customer_id: str | None = Field(default=None, max_length=200)
    email: str | None = Field(default=None, max_length=200)
    referral_code: str | None = Field(default=None, max_length=200)

    @model_validator(mode="after")
    def _at_least_one(self) -> ContactRef:
        if not any(self.model_dump().values()):
            raise ValueError("the contact needs at least one identifier")
        return self


class EventIn(BaseModel):
    """One business event sent by an integration."""

    model_config = ConfigDict(extra="forbid")

    event_id: str = Field(min_length=1, max_length=200)
    type: str = Field(min_length=1, max_length=100)
    occurred_at: AwareDatetime
    contact: ContactRef
    properties: dict[str, Any] = Field(default_factory=dict)

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if value not in EVENT_TYPES and not _CUSTOM_TYPE.fullmatch(value):
            raise ValueError(
                f"unknown event type {value!r}: one of {', '.join(EVENT_TYPES)}, or custom.<name>"
            )
        return value

    @model_validator(mode="after")
    def _required_properties(self) -> EventIn:
        for name, kind in _REQUIRED_PROPERTIES.get(self.type, {}).items():
            value = self.properties.get(name)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ValueError(f"{self.type} needs properties.{name} ({kind.__name__})")
            if isinstance(value, int) and value < 0:
                raise ValueError(f"properties.{name} must not be negative (integer fen)")
        return self


class EventRejection(BaseModel):
    index: int
    event_id: str | None
    errors: list[dict[str, Any]]


class IngestResult(BaseModel):
    accepted: int = Field(description="New events stored for processing.")
    duplicates: int = Field(description="Events whose event_id was seen before: ignored.")
    rejected: list[EventRejection]


class WeComSettingsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    corp_id: str = Field(min_length=1, max_length=64)
    token: str = Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9]+$")
    encoding_aes_key: str = Field(min_length=43, max_length=43)
    secret: str | None = Field(default=None, min_length=1, max_length=200)


class WeComSettingsOut(BaseModel):
    corp_id: str
    has_secret: bool
    callback_path: str
    updated_at: datetime


class WebhookSecretOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    created_at: datetime
    revoked_at: datetime | None


class WebhookSecretCreated(WebhookSecretOut):
    secret: str = Field(description="Shown only in this response.")


class IdentityOut(BaseModel):
    kind: str
    value: str
    source: str


class FollowOut(BaseModel):
    staff_userid: str
    status: str
    remark: str | None
    state: str | None
    added_at: datetime | None
    removed_at: datetime | None


class ContactSummary(BaseModel):
    id: uuid.UUID
    name: str | None
    owner_staff_userid: str | None
    lifecycle_stage: str
    channel_state: str | None
    created_at: datetime
    merged_into: uuid.UUID | None
    erased: bool


class ContactDetail(ContactSummary):
    avatar_url: str | None
    gender: int | None
    corp_name: str | None
    attributes: dict[str, Any]
    identities: list[IdentityOut]
    follows: list[FollowOut]
    merged_from: list[uuid.UUID]
    consent: dict[str, bool]


class ContactPage(BaseModel):
    items: list[ContactSummary]
    next_cursor: str | None


class ContactPatch(BaseModel):
    """Attributes to set (null removes one); keys are the brand's own field names."""

    model_config = ConfigDict(extra="forbid")

    attributes: dict[str, Any] = Field(default_factory=dict, max_length=100)
    name: str | None = Field(default=None, min_length=1, max_length=100)

    @field_validator("attributes")
    @classmethod
    def _keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", key):
                raise ValueError(f"invalid attribute name {key!r}")
        return value


class TimelineEntry(BaseModel):
    id: int
    type: str
    source: str
    source_event_id: str
    occurred_at: datetime
    properties: dict[str, Any]


class TimelinePage(BaseModel):
    items: list[TimelineEntry]
    next_cursor: str | None


class ConsentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel: str = Field(default="all", max_length=32)
    status: Literal["opted_in", "opted_out"]
    note: str | None = Field(default=None, max_length=500)


class StaffOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    userid: str
    name: str | None
    active: bool


class GroupOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    chat_id: str
    name: str | None
    owner_userid: str | None
    status: str
    member_count: int
    created_at: datetime
    dismissed_at: datetime | None


class GroupPage(BaseModel):
    items: list[GroupOut]
    next_cursor: str | None


class GroupMemberOut(BaseModel):
    """A staff member (type 1) or an external contact (type 2, by contact id)."""

    member_type: int
    staff_userid: str | None
    contact_id: uuid.UUID | None
    joined_at: datetime | None
    join_scene: int | None
    left_at: datetime | None


class GroupDetail(GroupOut):
    members: list[GroupMemberOut]
