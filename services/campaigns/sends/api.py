"""HTTP routes of the sends part: the sends of a campaign and of a contact, the in-app
inbox (in/out only)."""

from __future__ import annotations

import hmac
import time
import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import func, select, update

from services.campaigns import clock
from services.campaigns.governor.planner import settings_of
from services.campaigns.journeys import service as journeys
from services.campaigns.sends import sms
from services.campaigns.sends.models import CampaignSend, ContactInboxMessage
from services.campaigns.sends.schemas import (
    InboxMessageOut,
    InboxPage,
    SendPage,
    SendStatus,
    send_out,
)
from shared.auth import Principal, require
from shared.deps import SessionDep
from shared.errors import InvalidInput, NotFound, Unauthorized
from shared.models import Tenant
from shared.params import Cursor, DbId
from shared.scope import contact_in_scope

router = APIRouter()


class InboxMessageNotFound(NotFound):
    code = "inbox_message_not_found"


_reader = require("admin", "operator", "analyst", "staff")
_writer = require("admin", "operator", "staff")
Reader = Annotated[Principal, require("admin", "operator", "analyst")]
ReadableContact = Annotated[uuid.UUID, contact_in_scope(_reader)]
WritableContact = Annotated[uuid.UUID, contact_in_scope(_writer)]
Limit = Annotated[int, Query(ge=1, le=500)]


@router.get("/campaigns/{campaign_id}/sends", response_model=SendPage)
async def campaign_sends(
    campaign_id: DbId,
    principal: Reader,
    session: SessionDep,
    cursor: Cursor = None,
    limit: Limit = 100,
    status: SendStatus | None = None,
    step_id: Annotated[str | None, Query(max_length=64)] = None,
) -> SendPage:
    """Every send (or skip, with its reason) of the campaign's journeys, newest first;
    optionally of one `status` or `step_id`."""
    await journeys.get(session, principal.tenant, campaign_id)
    query = select(CampaignSend).where(
        CampaignSend.tenant_id == principal.tenant, CampaignSend.campaign_id == campaign_id
    )
    if status is not None:
        query = query.where(CampaignSend.status == status)
    if step_id is not None:
        query = query.where(CampaignSend.step_id == step_id)
    return await _page(session, query, cursor, limit)


@router.get("/contacts/{contact_id}/sends", response_model=SendPage)
async def contact_sends(
    contact_id: ReadableContact,
    principal: Annotated[Principal, _reader],
    session: SessionDep,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> SendPage:
    """Every send (or skip, with its reason) to the contact, newest first."""
    query = select(CampaignSend).where(
        CampaignSend.tenant_id == principal.tenant, CampaignSend.contact_id == contact_id
    )
    return await _page(session, query, cursor, limit)


async def _page(session: SessionDep, query: object, cursor: int | None, limit: int) -> SendPage:
    from sqlalchemy.sql import Select

    assert isinstance(query, Select)
    if cursor is not None:
        query = query.where(CampaignSend.id < cursor)
    rows = list(await session.scalars(query.order_by(CampaignSend.id.desc()).limit(limit)))
    return SendPage(
        items=[send_out(r) for r in rows],
        next_cursor=str(rows[-1].id) if len(rows) == limit else None,
    )


@router.get("/contacts/{contact_id}/inbox", response_model=InboxPage)
async def inbox(
    contact_id: ReadableContact,
    principal: Annotated[Principal, _reader],
    session: SessionDep,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> InboxPage:
    """The contact's in-app messages, newest first, with how many are unread."""
    m = ContactInboxMessage
    query = select(m).where(m.tenant_id == principal.tenant, m.contact_id == contact_id)
    if cursor is not None:
        query = query.where(m.id < cursor)
    rows = list(await session.scalars(query.order_by(m.id.desc()).limit(limit)))
    unread = await session.scalar(
        select(func.count()).where(
            m.tenant_id == principal.tenant, m.contact_id == contact_id, m.read_at.is_(None)
        )
    )
    return InboxPage(
        items=[InboxMessageOut.model_validate(r) for r in rows],
        unread=int(unread or 0),
        next_cursor=str(rows[-1].id) if len(rows) == limit else None,
    )


@router.post(
    "/contacts/{contact_id}/inbox/{message_id}/read",
    response_model=InboxMessageOut,
    openapi_extra={"x-scrm-errors": [401, 403, 404]},
)
async def mark_read(
    contact_id: WritableContact,
    message_id: DbId,
    principal: Annotated[Principal, _writer],
    session: SessionDep,
) -> InboxMessageOut:
    """Mark an in-app message read (again: it keeps its first read time). 404
    `inbox_message_not_found` for a message not in the contact's inbox."""
    m = ContactInboxMessage
    found = await session.scalar(
        update(m)
        .where(
            m.tenant_id == principal.tenant,
            m.contact_id == contact_id,
            m.id == message_id,
        )
        .values(read_at=func.coalesce(m.read_at, clock.now()))
        .returning(m)
    )
    if found is None:
        raise InboxMessageNotFound(f"no message {message_id} in the contact's inbox")
    return InboxMessageOut.model_validate(found)


_SMS_HEADERS = [
    {
        "name": "X-Timestamp",
        "in": "header",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
        "description": "Unix seconds; refused further than 300 s from now.",
    },
    {
        "name": "X-Signature",
        "in": "header",
        "required": True,
        "schema": {"type": "string", "pattern": "^sha256=[0-9a-f]{64}$"},
        "description": '`sha256=` + hex HMAC-SHA256(the tenant\'s SMS secret, timestamp + "." + '
        "body).",
    },
]
RECEIPT_SKEW_SECONDS = 300


class SmsReceiptIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str = Field(min_length=1, max_length=200)
    reference: str | None = Field(default=None, max_length=200)
    status: Literal["delivered", "failed"]
    error: str | None = Field(default=None, max_length=500)


class SmsReceiptOut(BaseModel):
    updated: int


@router.post(
    "/sms/{tenant_slug}/receipts",
    response_model=SmsReceiptOut,
    openapi_extra={
        "parameters": _SMS_HEADERS,
        "x-scrm-errors": [400, 401, 413, 422],
        "responses": {
            "401": {
                "description": "`invalid_signature`: a missing, stale or wrong signature, also "
                "for an unknown tenant or one without an SMS provider."
            }
        },
    },
)
async def sms_receipt(
    tenant_slug: Annotated[str, PathParam(pattern=r"^[a-z0-9-]{1,63}$")],
    request: Request,
    session: SessionDep,
) -> SmsReceiptOut:
    """A delivery receipt from the tenant's SMS gateway: the send of that message id
    becomes `delivered` or `failed` (a receipt repeated, or for a message not ours,
    changes nothing)."""
    body = await request.body()
    tenant_id = await session.scalar(select(Tenant.id).where(Tenant.slug == tenant_slug))
    provider = None
    if tenant_id is not None:
        provider = (await settings_of(session, tenant_id)).sms_provider
    timestamp = request.headers.get("x-timestamp", "")
    given = request.headers.get("x-signature", "")
    fresh = timestamp.isdigit() and abs(time.time() - int(timestamp)) <= RECEIPT_SKEW_SECONDS
    if (
        provider is None
        or tenant_id is None
        or not fresh
        or not hmac.compare_digest(sms.signature(provider.secret, timestamp, body), given)
    ):
        raise Unauthorized("signature does not match", code="invalid_signature")
    try:
        receipt = SmsReceiptIn.model_validate_json(body)
    except ValidationError as exc:
        raise InvalidInput(
            "the receipt is not {id, reference?, status: delivered|failed, error?}",
            details=exc.errors(include_url=False, include_input=False),
        ) from None
    now = clock.now()
    s = CampaignSend
    result = await session.execute(
        update(s)
        .where(
            s.tenant_id == tenant_id,
            s.channel == "sms",
            s.provider_ref == receipt.id,
            s.status.in_(("sent", "sending")),
        )
        .values(
            status=receipt.status,
            reason=None if receipt.status == "delivered" else "provider_failed",
            error=receipt.error,
            delivered_at=now if receipt.status == "delivered" else None,
            updated_at=now,
        )
    )
    return SmsReceiptOut(updated=int(getattr(result, "rowcount", 0) or 0))
