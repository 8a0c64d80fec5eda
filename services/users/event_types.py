"""The inbound event types and their properties: the one source of their schemas.

What integrations send (signed webhooks, `POST /v1/events`) is validated at
ingest against the model of its type here (services/users/schemas.py `EventIn`),
so an event is refused with its index in the batch rather than accepted and
then dead in a worker. Every other description of these types (the event
catalog, OpenAPI, README) reads `INBOUND_EVENT_TYPES`.

The models bound what the services that consume the events can store:

- money is integer fen, never negative, at most `MAX_FEN` (2^31 - 1, a Postgres
  `integer`): the points an order earns go to `integer` columns
  (points_lots.points), and at the default 1 point per ¥1 even a 100x
  multiplier keeps an order of `MAX_FEN` within them;
- order ids are at most 128 characters (points_ledger.order_id), other ids 200;
- quantities are whole numbers from 1 to `MAX_QUANTITY`.

Properties a model does not name are kept as sent (free-form), and so are all
the properties of `custom.*` types.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from services.users.consent import CHANNELS

MAX_FEN = 2**31 - 1
MAX_QUANTITY = 1_000_000
MAX_ORDER_ID = 128
MAX_ID = 200
MAX_TEXT = 2000

Fen = Annotated[StrictInt, Field(ge=0, le=MAX_FEN, description="Integer fen (¥1 = 100).")]
Quantity = Annotated[StrictInt, Field(ge=1, le=MAX_QUANTITY)]
OrderId = Annotated[StrictStr, Field(min_length=1, max_length=MAX_ORDER_ID)]
Id = Annotated[StrictStr, Field(min_length=1, max_length=MAX_ID)]
Text = Annotated[StrictStr, Field(max_length=MAX_TEXT)]
ConsentChannel = Literal[CHANNELS]  # type: ignore[valid-type]

CUSTOM_TYPE = re.compile(r"^custom\.[a-z0-9_]+(\.[a-z0-9_]+)*$")


class Properties(BaseModel):
    """Properties of an inbound event: the named ones typed, any others kept as sent."""

    model_config = ConfigDict(extra="allow")


def _example(example: dict[str, Any]) -> ConfigDict:
    return ConfigDict(extra="allow", json_schema_extra={"examples": [example]})


class OrderPaid(Properties):
    """A paid order: earns points (1 per whole ¥1 by default)."""

    model_config = _example({"order_id": "SO-20261120-0001", "amount_fen": 12900})

    order_id: OrderId
    amount_fen: Fen = Field(description="What was paid, in integer fen.")


class OrderRefunded(Properties):
    """A refund of (part of) an order: takes back its points in proportion."""

    model_config = _example({"order_id": "SO-20261120-0001", "refund_fen": 4300})

    order_id: OrderId
    refund_fen: Fen = Field(description="What was refunded, in integer fen.")


class Checkin(Properties):
    """A daily check-in (one earning per tenant-local day)."""

    model_config = _example({})


class Comment(Properties):
    """A comment (earns points up to a daily cap)."""

    model_config = _example({"comment_id": "c-7731"})

    comment_id: Id | None = None


class PageView(Properties):
    model_config = _example({"url": "https://shop.example.com/p/42"})

    url: Text | None = None


class ProductView(Properties):
    model_config = _example({"product_id": "SKU-42", "category": "tea"})

    product_id: Id
    category: Id | None = None


class CartAdd(Properties):
    model_config = _example({"product_id": "SKU-42", "quantity": 2, "price_fen": 6450})

    product_id: Id
    quantity: Quantity | None = None
    price_fen: Fen | None = Field(default=None, description="Unit price, in integer fen.")


class Share(Properties):
    model_config = _example({})


class LiveWatch(Properties):
    model_config = _example({"live_id": "live-1111"})

    live_id: Id


class ConsentChange(Properties):
    """Marketing consent given (opt_in) or withdrawn (opt_out) for a channel."""

    model_config = _example({"channel": "sms", "note": "replied TD"})

    channel: ConsentChannel
    note: Annotated[StrictStr, Field(max_length=500)] | None = None


class ReferralRegistered(Properties):
    """The contact registered through an inviter's share link: the inviter's invite code,
    and the device and IP it came from. The device id and IP are hashed (a keyed hash,
    per tenant) at ingest and stored only as `device_hash` and `ip_hash` (any sent
    under those names are dropped): what is kept can tell the same device again,
    never which it was."""

    model_config = _example(
        {"code": "7KQ2MZ9XPA", "device_id": "idfa-4b1f0c2e", "ip": "203.0.113.24"}
    )

    code: Annotated[StrictStr, Field(min_length=1, max_length=16)] = Field(
        description="The inviter's invite code (GET /v1/points/referrals/codes/{contact_id})."
    )
    device_id: Id | None = None
    ip: Annotated[StrictStr, Field(min_length=1, max_length=64)] | None = None


INBOUND_EVENT_TYPES: dict[str, type[Properties]] = {
    "order.paid": OrderPaid,
    "order.refunded": OrderRefunded,
    "checkin": Checkin,
    "comment": Comment,
    "page.view": PageView,
    "product.view": ProductView,
    "cart.add": CartAdd,
    "share": Share,
    "live.watch": LiveWatch,
    "consent.opt_in": ConsentChange,
    "consent.opt_out": ConsentChange,
    "referral.registered": ReferralRegistered,
}

HASHED_PROPERTIES = {"referral.registered": {"device_id": "device_hash", "ip": "ip_hash"}}


def is_known_type(event_type: str) -> bool:
    """A type of INBOUND_EVENT_TYPES, or a brand's own `custom.<name>`."""
    return event_type in INBOUND_EVENT_TYPES or CUSTOM_TYPE.fullmatch(event_type) is not None


def validate_properties(event_type: str, properties: dict[str, Any]) -> None:
    """Raises pydantic's ValidationError when `properties` do not fit the type's model."""
    model = INBOUND_EVENT_TYPES.get(event_type)
    if model is not None:
        model.model_validate(properties)
