"""HTTP routes of the sends part: the sends of a campaign and of a contact, the in-app
inbox (in/out only)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import func, select, update

from services.campaigns import clock
from services.campaigns.journeys import service as journeys
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
from shared.errors import NotFound
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
