"""HTTP routes of the points ledger: accounts, their entries, adjustments, redemptions,
expiry notices, and the service's status (in/out only: rules live in service.py)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from services.points.catalog import service as catalog
from services.points.catalog.schemas import RedemptionOut
from services.points.exceptions import InsufficientPoints
from services.points.ledger import expiry, service
from services.points.ledger.booking import Booked
from services.points.ledger.schemas import (
    Account,
    AdjustmentIn,
    Booking,
    Entry,
    LedgerPage,
    PointsStatus,
    RedemptionIn,
)
from shared.auth import Principal, require
from shared.deps import SessionDep
from shared.idempotency import IdempotencyDep
from shared.params import Cursor
from shared.scope import contact_in_scope

# Included by services.points.api, whose router adds the /v1 prefix and the tag.
router = APIRouter()

_reader = require("admin", "operator", "analyst", "staff")
_operator = require("admin", "operator")
_redeemer = require("admin", "operator", "staff")
Reader = Annotated[Principal, _reader]
StatusReader = Annotated[Principal, require("admin", "operator", "analyst")]
Operator = Annotated[Principal, _operator]
Redeemer = Annotated[Principal, _redeemer]
# The path's contact id, once it is in the caller's scope (404 otherwise: see
# shared.scope), checked with the same role dependency as the route's principal.
ReadableMember = Annotated[uuid.UUID, contact_in_scope(_reader)]
AdjustableMember = Annotated[uuid.UUID, contact_in_scope(_operator)]
RedeemingMember = Annotated[uuid.UUID, contact_in_scope(_redeemer)]


def _booking(booked: Booked, balance: int) -> Booking:
    return Booking(
        entry_id=booked.entry_id,
        contact_id=booked.contact_id,
        kind=booked.kind,
        points=booked.points,
        balance=balance,
        created_at=booked.created_at,
    )


@router.get("/points/expiry-notices")
async def expiry_notices(
    principal: Reader,
    session: SessionDep,
    cursor: Cursor = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict[str, Any]:
    """'N points expire on D' notices (one per member and date), newest first, kept for
    the notification channels until campaigns deliver them."""
    items = await expiry.list_notices(session, principal.tenant, before=cursor, limit=limit)
    return {
        "items": items,
        "next_cursor": str(items[-1]["id"]) if len(items) == limit else None,
    }


@router.get("/points/status", response_model=PointsStatus)
async def status(principal: StatusReader, session: SessionDep, request: Request) -> PointsStatus:
    """The event types this service consumes and the caller's tenant backlog in it."""
    return await service.status(session, request.app.state.runtime, principal.tenant)


@router.get("/points/accounts/{contact_id}", response_model=Account)
async def get_account(
    contact_id: ReadableMember, principal: Reader, session: SessionDep
) -> Account:
    """Balance, debt, lifetime sums and the points expiring within the warning window."""
    return Account.model_validate(await service.account_view(session, principal.tenant, contact_id))


@router.get("/points/accounts/{contact_id}/ledger", response_model=LedgerPage)
async def get_ledger(
    contact_id: ReadableMember,
    principal: Reader,
    session: SessionDep,
    cursor: Cursor = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> LedgerPage:
    """Entries, newest first; pass `next_cursor` back as `cursor` for the next page."""
    items, next_id = await service.ledger_page(
        session, principal.tenant, contact_id, before=cursor, limit=limit
    )
    return LedgerPage(
        items=[Entry.model_validate(i) for i in items],
        next_cursor=str(next_id) if next_id is not None else None,
    )


@router.post("/points/accounts/{contact_id}/adjustments", status_code=201, response_model=Booking)
async def adjust(
    contact_id: AdjustableMember,
    body: AdjustmentIn,
    principal: Operator,
    idem: IdempotencyDep,
    session: SessionDep,
) -> JSONResponse:
    """An operator's correction: positive credits a new lot, negative debits (never
    below zero: 409 `insufficient_points`)."""
    try:
        booked = await service.adjust(
            session, principal.tenant, contact_id, body.points, body.reason, principal.actor
        )
    except InsufficientPoints as exc:
        # Answered, not raised: the refusal is stored under the Idempotency-Key too,
        # so a retry gets the same 409 even if points arrived meanwhile.
        return idem.respond(service.insufficient(exc), status_code=409)
    balance = await service.balance_of(session, booked.account_id)
    return idem.respond(_booking(booked, balance), status_code=201)


@router.post(
    "/points/accounts/{contact_id}/redemptions",
    status_code=201,
    response_model=Booking | RedemptionOut,
)
async def redeem(
    contact_id: RedeemingMember,
    body: RedemptionIn,
    principal: Redeemer,
    idem: IdempotencyDep,
    session: SessionDep,
) -> JSONResponse:
    """Spend points (oldest first), or redeem a catalog item (`item_id`; points + cash
    items hold the points for `order_id`): 201, or 409 (`insufficient_points`,
    `out_of_stock`, `limit_reached`) with nothing changed."""
    if body.item_id is not None:
        try:
            redeemed = await catalog.redeem_item(
                session,
                principal.tenant,
                contact_id,
                body.item_id,
                order_id=body.order_id,
                reason=body.reason,
                actor=principal.actor,
            )
        except InsufficientPoints as exc:
            return idem.respond(service.insufficient(exc), status_code=409)
        return idem.respond(RedemptionOut.model_validate(redeemed), status_code=201)
    assert body.points is not None
    try:
        booked = await service.redeem_points(
            session, principal.tenant, contact_id, body.points, body.reason, principal.actor
        )
    except InsufficientPoints as exc:
        return idem.respond(service.insufficient(exc), status_code=409)
    balance = await service.balance_of(session, booked.account_id)
    return idem.respond(_booking(booked, balance), status_code=201)
