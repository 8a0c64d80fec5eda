"""HTTP contract of the users service."""

from __future__ import annotations

import math
import re
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from services.users.event_types import INBOUND_EVENT_TYPES, is_known_type, validate_properties
from services.users.identity import normalise
from shared.errors import InvalidInput
from shared.service_status import ServiceStatus

EVENT_TYPES = tuple(INBOUND_EVENT_TYPES)
MAX_BATCH = 1000
# occurred_at bounds: every time zone's reading of them is a valid date.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)


class UsersStatus(ServiceStatus):
    """Bus status of the users service for one tenant."""

    inbound_pending: int = Field(
        description="Callbacks and webhook events stored and not yet applied "
        "(dead letters aside: see dead_letters)"
    )


class ContactRef(BaseModel):
    """The identifiers an event knows its contact by (at least one).

    Each is validated and normalised as OneID stores it (identity.normalise): a
    phone becomes E.164, an email lower case; a blank one counts as absent.
    """

    model_config = ConfigDict(extra="forbid")

    external_userid: str | None = Field(default=None, max_length=200)
    unionid: str | None = Field(default=None, max_length=200)
    openid: str | None = Field(default=None, max_length=200)
    phone: str | None = Field(
        default=None,
        max_length=40,
        description="Any usual writing of a valid number (national numbers are Chinese); "
        "stored as E.164.",
    )
    shop_customer_id: str | None = Field(default=None, max_length=200)
    email: str | None = Field(default=None, max_length=200)
    referral_code: str | None = Field(default=None, max_length=200)

    @field_validator("*")
    @classmethod
    def _normalised(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or not value.strip():
            return None
        assert info.field_name is not None
        try:
            return normalise(info.field_name, value)
        except InvalidInput as exc:
            raise ValueError(exc.message) from None

    @model_validator(mode="before")
    @classmethod
    def _known_identifiers(cls, data: Any) -> Any:
        # Pydantic's "extra inputs are not permitted" would not say what is permitted.
        if isinstance(data, dict):
            unknown = sorted(str(key) for key in data if key not in cls.model_fields)
            if unknown:
                raise ValueError(
                    f"unknown identifier {', '.join(map(repr, unknown))}: "
                    f"the contact is known by {', '.join(cls.model_fields)}"
                )
        return data

    @model_validator(mode="after")
    def _at_least_one(self) -> ContactRef:
        if not any(self.model_dump().values()):
            raise ValueError("the contact needs at least one identifier")
        return self


def _unstorable(document: object) -> str | None:
    """Why the database could not store this JSON value as it is, or None.

    Postgres text and jsonb refuse NUL characters and unpaired surrogates, and
    jsonb refuses NaN and infinities. Ingest's JSON loader refuses them too; this
    check also holds events stored before it did (see processing.UnappliableEvent).
    """
    stack: list[tuple[object, str]] = [(document, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                if isinstance(key, str) and (reason := _bad_text(key)):
                    return f"a key in {path or 'the event'} {reason}"
                stack.append((item, f"{path}.{key}" if path else str(key)))
        elif isinstance(value, list):
            stack.extend((item, f"{path}[{i}]") for i, item in enumerate(value))
        elif isinstance(value, str) and (reason := _bad_text(value)):
            return f"{path or 'the event'} {reason}"
        elif isinstance(value, float) and not math.isfinite(value):
            return f"{path or 'the event'} is not a finite number"
    return None


def _bad_text(text: str) -> str | None:
    if "\x00" in text:
        return "contains a NUL character (U+0000)"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains an unpaired surrogate (not UTF-8 text)"
    return None


class EventIn(BaseModel):
    """One business event sent by an integration.

    Validated as far as it can be at ingest, so that what is accepted can be
    applied: the contact's identifiers (ContactRef), the properties of known
    types (services/users/event_types.py) and nothing the database would refuse.
    """

    model_config = ConfigDict(extra="forbid")

    event_id: str = Field(min_length=1, max_length=200)
    type: str = Field(min_length=1, max_length=100)
    occurred_at: AwareDatetime
    contact: ContactRef
    properties: dict[str, Any] = Field(
        default_factory=dict,
        description="Typed for the known types (see the event types); free-form for custom.*.",
    )

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        reason = _unstorable(data)
        if reason is not None:
            raise ValueError(reason)
        return data

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if not is_known_type(value):
            raise ValueError(
                f"unknown event type {value!r}: one of {', '.join(EVENT_TYPES)}, or custom.<name>"
            )
        return value

    @field_validator("occurred_at")
    @classmethod
    def _plausible_time(cls, value: datetime) -> datetime:
        if not EARLIEST <= value < LATEST:
            raise ValueError(f"occurred_at must be between {EARLIEST.year} and {LATEST.year} (UTC)")
        return value

    @field_validator("properties")
    @classmethod
    def _typed_properties(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        # Errors come back under properties.<name>; the properties are kept as sent.
        event_type = info.data.get("type")
        if isinstance(event_type, str):
            validate_properties(event_type, value)
        return value


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
