"""The users service's event types: what integrations send it, what it publishes.

Inbound business events are typed by services/users/event_types.py (which
ingest validates against); a WeCom callback's fields are WeCom's own XML
elements. Each applied business event is published again, under its own type,
for the other services (`order.paid` reaches points that way).
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, create_model

from services.users.event_types import INBOUND_EVENT_TYPES, Properties
from shared.catalog import EventType

_DESCRIPTIONS = {
    "order.paid": "An order was paid (shop, mini-program, live stream).",
    "order.refunded": "An order was refunded, wholly or in part.",
    "checkin": "The contact checked in (once a tenant-local day earns points).",
    "comment": "The contact commented (earns points up to a daily cap).",
    "page.view": "The contact viewed a page.",
    "product.view": "The contact viewed a product.",
    "cart.add": "The contact put a product in the cart.",
    "share": "The contact shared something.",
    "live.watch": "The contact watched a live stream.",
    "consent.opt_in": "The contact gave marketing consent for a channel (recorded, "
    "then `consent.changed`).",
    "consent.opt_out": "The contact withdrew marketing consent for a channel (recorded, "
    "then `consent.changed`).",
    "referral.registered": "The contact registered through an inviter's share link "
    "(`code`, `device_id`, `ip`): attributes them to the inviter (points referrals); the "
    "device id and IP are stored only hashed.",
    "custom.*": "A brand's own event, `custom.<name>`: stored on the timeline and "
    "published as it came.",
}


def _example(model: type[BaseModel]) -> dict[str, Any]:
    extra = model.model_config.get("json_schema_extra")
    examples = extra.get("examples") if isinstance(extra, dict) else None
    first = examples[0] if isinstance(examples, list) and examples else None
    return dict(first) if isinstance(first, dict) else {}


_BUSINESS_TYPES: dict[str, type[BaseModel]] = {**INBOUND_EVENT_TYPES, "custom.*": Properties}
_BUSINESS_EXAMPLES = {
    name: _example(model) if name != "custom.*" else {"campaign": "1111", "stage": 2}
    for name, model in _BUSINESS_TYPES.items()
}

# -- WeCom callbacks (the decrypted XML's elements) ----------------------------------------


class _WeComCallback(BaseModel):
    model_config = ConfigDict(extra="allow")

    ToUserName: str = Field(description="The corp id.")
    CreateTime: int = Field(description="Unix time of the change.")
    MsgType: Literal["event"]
    Event: str
    ChangeType: str


class WeComContactChange(_WeComCallback):
    """`change_external_contact`: a customer (external contact) and a staff member."""

    UserID: str = Field(description="The staff member's WeCom userid.")
    ExternalUserID: str = Field(description="The customer's external_userid.")
    State: str | None = Field(default=None, description="The channel code (渠道活码) scanned.")
    WelcomeCode: str | None = None
    FailReason: str | None = Field(default=None, description="transfer_fail only.")


class WeComChatChange(_WeComCallback):
    """`change_external_chat`: a customer group."""

    ChatId: str
    UpdateDetail: str | None = Field(
        default=None, description="update only: add_member, del_member, change_name, ..."
    )
    JoinScene: int | None = None
    QuitScene: int | None = None
    MemChangeCnt: int | None = None
    MemChangeList: list[str] | None = Field(
        default=None, description="The members who joined or left (Item elements)."
    )


class WeComTagChange(_WeComCallback):
    """`change_external_tag`: a corp tag or tag group changed in WeCom."""

    Id: str
    TagType: Literal["tag", "tag_group"]
    StrategyId: str | None = None


_CONTACT_CHANGES = {
    "add_external_contact": "A staff member added a customer: `contact.added`.",
    "add_half_external_contact": "A customer added a staff member who has not accepted "
    "yet: `contact.half_added`.",
    "edit_external_contact": "The staff member edited the customer: `contact.updated`.",
    "del_external_contact": "The staff member deleted the customer: "
    "`contact.removed_by_staff`, and `contact.lost` when no staff follows them any more.",
    "del_follow_user": "The customer deleted the staff member: `contact.lost`.",
    "transfer_fail": "Handing the customer to another staff member failed: "
    "`contact.transfer_failed`.",
}
_CHAT_CHANGES = {
    "create": "A customer group was created: `group.created`.",
    "update": "A group changed; members who joined or left: `group.joined`, `group.left`.",
    "dismiss": "A group was dismissed: `group.dismissed`.",
}
_TAG_CHANGES = {
    change: f"A corp tag or tag group was {done} in WeCom: `wecom.tag_changed`."
    for change, done in (
        ("create", "created"),
        ("update", "changed"),
        ("delete", "deleted"),
        ("shuffle", "reordered"),
    )
}
_CALLBACK = {"ToUserName": "ww0f3a5c7e9b1d2f4a", "CreateTime": 1763606400, "MsgType": "event"}


def _wecom(
    event: str, changes: dict[str, str], model: type[_WeComCallback], fields: dict[str, Any]
) -> list[EventType]:
    return [
        EventType(
            name=f"{event}.{change}",
            direction="inbound",
            service="users",
            via="wecom",
            description=description,
            model=model,
            example={**_CALLBACK, "Event": event, "ChangeType": change, **fields},
        )
        for change, description in changes.items()
    ]


# -- domain events ---------------------------------------------------------------------------


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _ContactChange(_Payload):
    contact_id: uuid.UUID
    occurred_at: AwareDatetime
    staff_userid: str = Field(description="The staff member (WeCom userid) concerned.")


class ContactAdded(_ContactChange):
    """A staff member added the contact on WeCom (its follow is active)."""

    state: str | None = Field(description="The channel code (渠道活码) the contact scanned.")
    welcome_code: str | None
    new_contact: bool = Field(description="True when the contact was not known before.")


class ContactHalfAdded(_ContactChange):
    """The contact added a staff member who has not accepted yet."""

    state: str | None
    welcome_code: str | None


class ContactUpdated(_ContactChange):
    """The staff member edited the contact on WeCom (details are fetched again)."""


class ContactRemovedByStaff(_ContactChange):
    """The staff member deleted the contact."""


class ContactLost(_ContactChange):
    """No staff member follows the contact any more (it becomes churned when it
    deleted the staff member)."""

    reason: Literal["deleted_by_contact", "deleted_by_staff"]


class ContactTransferFailed(_ContactChange):
    """Handing the contact to another staff member failed."""

    fail_reason: str | None


class ContactMerged(_Payload):
    """Two contacts proved one person: the merged one's history moved to the survivor."""

    survivor_id: uuid.UUID
    merged_id: uuid.UUID
    reason: str = Field(description="What proved it, e.g. the shared identifier's kind.")


class ContactErased(_Payload):
    """The contact's identifying data was destroyed; its id stays as a pseudonym."""

    contact_id: uuid.UUID
    pseudonym: str


class ContactImported(_Payload):
    """A CSV import created the contact."""

    contact_id: uuid.UUID
    source: Literal["import"]


class ContactProfileChanged(_Payload):
    """The contact was created, or its profile facts changed (owner, channel,
    attributes): the full current values, for the read models of other services.
    Names, phones and other personal data never travel in it."""

    contact_id: uuid.UUID
    created_at: AwareDatetime
    owner_staff: str | None
    channel: str | None
    attributes: dict[str, Any]


class ConsentChanged(_Payload):
    """A consent change was recorded (API, opt-in/out events)."""

    contact_id: uuid.UUID
    channel: str
    status: Literal["opted_in", "opted_out"]


class GroupChange(_Payload):
    """A customer group was created or dismissed."""

    chat_id: str
    occurred_at: AwareDatetime


class GroupJoined(_Payload):
    """The contact joined a customer group (callback or group sync)."""

    chat_id: str
    contact_id: uuid.UUID
    occurred_at: AwareDatetime
    join_scene: str | None = Field(
        default=None, description="WeCom's JoinScene, from callbacks only."
    )


class GroupLeft(_Payload):
    """The contact left a customer group (callback or group sync)."""

    chat_id: str
    contact_id: uuid.UUID
    occurred_at: AwareDatetime
    quit_scene: str | None = Field(
        default=None, description="WeCom's QuitScene, from callbacks only."
    )


class WeComTagChanged(_Payload):
    """A corp tag or tag group changed in WeCom."""

    change_type: Literal["create", "update", "delete", "shuffle"]
    tag_type: str | None
    id: str | None
    strategy_id: str | None
    occurred_at: AwareDatetime


class BusinessEvent(_Payload):
    """An integration's event, applied: the contact resolved, the properties as sent."""

    contact_id: uuid.UUID
    event_id: str = Field(description="The integration's event_id.")
    occurred_at: AwareDatetime
    properties: dict[str, Any]
    source: str = Field(description="Where it was stored from: `event` (webhook or API).")


def _business_payload(name: str, model: type[BaseModel]) -> type[BaseModel]:
    words = name.replace("*", "any").replace("_", ".").split(".")
    title = "".join(word.capitalize() for word in words)
    published: type[BaseModel] = create_model(
        f"{title}Published",
        __base__=BusinessEvent,
        __doc__=f"`{name}` as the users service publishes it once applied.",
        properties=(model, ...),
    )
    return published


_CONTACT = "5d0c6c57-9b9a-4a7e-8d35-3f0b5f4f2b11"
_OTHER = "9a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c5d"
_AT = "2026-11-20T10:31:00+08:00"
_FOLLOW = {"contact_id": _CONTACT, "occurred_at": _AT, "staff_userid": "zhangsan"}


def _domain(name: str, model: type[BaseModel], example: dict[str, Any]) -> EventType:
    return EventType(
        name=name,
        direction="domain",
        service="users",
        description=" ".join((model.__doc__ or "").split()),
        model=model,
        example=example,
    )


EVENTS: list[EventType] = [
    *(
        EventType(
            name=name,
            direction="inbound",
            service="users",
            via="events",
            description=_DESCRIPTIONS[name],
            model=model,
            example=_BUSINESS_EXAMPLES[name],
        )
        for name, model in _BUSINESS_TYPES.items()
    ),
    *_wecom(
        "change_external_contact",
        _CONTACT_CHANGES,
        WeComContactChange,
        {"UserID": "zhangsan", "ExternalUserID": "wmqfasd1e1927831123", "State": "live-1111"},
    ),
    *_wecom(
        "change_external_chat",
        _CHAT_CHANGES,
        WeComChatChange,
        {"ChatId": "wrOgQhDgAAMYQiS5ol9G7gK9JVAAAA"},
    ),
    *_wecom("change_external_tag", _TAG_CHANGES, WeComTagChange, {"Id": "et1", "TagType": "tag"}),
    _domain(
        "contact.added",
        ContactAdded,
        {**_FOLLOW, "state": "live-1111", "welcome_code": "CALLBACK_CODE", "new_contact": True},
    ),
    _domain(
        "contact.half_added", ContactHalfAdded, {**_FOLLOW, "state": None, "welcome_code": None}
    ),
    _domain("contact.updated", ContactUpdated, _FOLLOW),
    _domain("contact.removed_by_staff", ContactRemovedByStaff, _FOLLOW),
    _domain("contact.lost", ContactLost, {**_FOLLOW, "reason": "deleted_by_contact"}),
    _domain(
        "contact.transfer_failed",
        ContactTransferFailed,
        {**_FOLLOW, "fail_reason": "customer_refused"},
    ),
    _domain(
        "contact.merged",
        ContactMerged,
        {"survivor_id": _CONTACT, "merged_id": _OTHER, "reason": "phone"},
    ),
    _domain("contact.erased", ContactErased, {"contact_id": _CONTACT, "pseudonym": "erased-3f9a"}),
    _domain("contact.imported", ContactImported, {"contact_id": _CONTACT, "source": "import"}),
    _domain(
        "contact.profile_changed",
        ContactProfileChanged,
        {
            "contact_id": _CONTACT,
            "created_at": _AT,
            "owner_staff": "zhangsan",
            "channel": "live-1111",
            "attributes": {"city": "Hangzhou", "vip": True},
        },
    ),
    _domain(
        "consent.changed",
        ConsentChanged,
        {"contact_id": _CONTACT, "channel": "sms", "status": "opted_out"},
    ),
    _domain("group.created", GroupChange, {"chat_id": "wrOgQhDgAAMYQiS5", "occurred_at": _AT}),
    _domain("group.dismissed", GroupChange, {"chat_id": "wrOgQhDgAAMYQiS5", "occurred_at": _AT}),
    _domain(
        "group.joined",
        GroupJoined,
        {
            "chat_id": "wrOgQhDgAAMYQiS5",
            "contact_id": _CONTACT,
            "occurred_at": _AT,
            "join_scene": "1",
        },
    ),
    _domain(
        "group.left",
        GroupLeft,
        {
            "chat_id": "wrOgQhDgAAMYQiS5",
            "contact_id": _CONTACT,
            "occurred_at": _AT,
            "quit_scene": "0",
        },
    ),
    _domain(
        "wecom.tag_changed",
        WeComTagChanged,
        {
            "change_type": "create",
            "tag_type": "tag",
            "id": "et1",
            "strategy_id": None,
            "occurred_at": _AT,
        },
    ),
    *(
        _domain(
            name,
            _business_payload(name, model),
            {
                "contact_id": _CONTACT,
                "event_id": "shop-7f3a2c",
                "occurred_at": _AT,
                "properties": _BUSINESS_EXAMPLES[name],
                "source": "event",
            },
        )
        for name, model in _BUSINESS_TYPES.items()
    ),
]
