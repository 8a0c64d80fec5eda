"""HTTP routes of the redemption catalog (in/out only: rules live in service.py).

Redeeming an item is POST /v1/points/accounts/{contact_id}/redemptions with
`item_id` (see ledger/api.py); these routes manage the items and the redemptions.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from services.points.catalog import holds
from services.points.catalog import service as catalog
from services.points.catalog.schemas import (
    DrawCheck,
    ItemIn,
    ItemKind,
    ItemOut,
    ItemPage,
    ItemPatch,
    RedemptionOut,
)
from shared.auth import Principal, require
from shared.deps import SessionDep
from shared.idempotency import IdempotencyDep
from shared.params import DbId

# Included by services.points.api's router, under its /v1 prefix and tags.
router = APIRouter()

Reader = Annotated[Principal, require("admin", "operator", "analyst", "staff")]
Operator = Annotated[Principal, require("admin", "operator")]
Admin = Annotated[Principal, require("admin")]
RedemptionId = DbId


@router.post("/points/items", status_code=201, response_model=ItemOut)
async def create_item(
    body: ItemIn, principal: Admin, idem: IdempotencyDep, session: SessionDep
) -> JSONResponse:
    """Add a catalog item; a lottery's prizes come with it. Omitted `points_cost`: a
    coupon costs its value at the tenant's `points_per_yuan_off`, a draw 100 points.
    409 `sku_taken` when the sku is in use."""
    item = await catalog.create_item(session, principal.tenant, body)
    return idem.respond(ItemOut.model_validate(item), status_code=201)


@router.get("/points/items", response_model=ItemPage)
async def list_items(
    principal: Reader,
    session: SessionDep,
    kind: ItemKind | None = None,
    active: bool | None = None,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> ItemPage:
    """Items by sku; pass `next_cursor` back as `cursor` for the next page."""
    items, next_cursor = await catalog.list_items(
        session, principal.tenant, kind=kind, active=active, cursor=cursor, limit=limit
    )
    return ItemPage(items=[ItemOut.model_validate(i) for i in items], next_cursor=next_cursor)


@router.get("/points/items/{item_id}", response_model=ItemOut)
async def get_item(item_id: uuid.UUID, principal: Reader, session: SessionDep) -> ItemOut:
    """An item with its stock left (and a lottery's prize table)."""
    return ItemOut.model_validate(await catalog.item_view(session, principal.tenant, item_id))


@router.patch("/points/items/{item_id}", response_model=ItemOut)
async def patch_item(
    item_id: uuid.UUID, body: ItemPatch, principal: Admin, session: SessionDep
) -> ItemOut:
    """Activate or deactivate, set the stock, the per-member limit, the price or the hold
    time (null stock or limit: unlimited)."""
    item = await catalog.update_item(session, principal.tenant, item_id, body.changes())
    return ItemOut.model_validate(item)


@router.get("/points/redemptions/{redemption_id}", response_model=RedemptionOut)
async def get_redemption(
    redemption_id: RedemptionId, principal: Reader, session: SessionDep
) -> RedemptionOut:
    """A redemption, its status (a hold's too) and the member's balance now."""
    view = await catalog.redemption_view(session, principal.tenant, redemption_id)
    return RedemptionOut.model_validate(view)


@router.get("/points/redemptions/{redemption_id}/verify", response_model=DrawCheck)
async def verify_draw(
    redemption_id: RedemptionId, principal: Reader, session: SessionDep
) -> DrawCheck:
    """Recompute a lottery draw from its stored seed and prize table."""
    return DrawCheck.model_validate(
        await catalog.check_draw(session, principal.tenant, redemption_id)
    )


@router.post("/points/redemptions/{redemption_id}/cancel", response_model=RedemptionOut)
async def cancel_hold(
    redemption_id: RedemptionId, principal: Operator, idem: IdempotencyDep, session: SessionDep
) -> JSONResponse:
    """Release a held points + cash redemption now: the points go back to the member
    and the unit to stock. 409 `not_held` when it is spent or released already."""
    view = await holds.cancel_hold(session, principal.tenant, redemption_id, principal.actor)
    return idem.respond(RedemptionOut.model_validate(view))
