"""HTTP routes of the WeCom corp-tag mirror (in/out only: rules live in service.py).

Nothing here calls WeCom: a sync is queued (202) and runs in the tagging workers.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from services.tagging import clock
from services.tagging.wecom import service
from services.tagging.wecom.schemas import (
    CorpTag,
    CorpTagGroup,
    CorpTagList,
    OpKind,
    OpStatus,
    WeComTagOp,
    WeComTagOpPage,
)
from shared.auth import Principal, require
from shared.deps import SessionDep
from shared.idempotency import IdempotencyDep
from shared.params import Cursor, DbId

router = APIRouter()

Operator = Annotated[Principal, require("admin", "operator")]
Reader = Annotated[Principal, require("admin", "operator", "analyst")]


@router.post(
    "/wecom/tags/sync",
    status_code=202,
    response_model=WeComTagOp,
    openapi_extra={"x-scrm-errors": [401, 403, 422]},
)
async def sync_corp_tags(
    principal: Operator, idem: IdempotencyDep, session: SessionDep
) -> JSONResponse:
    """Queue a full sync of the corp's tags from WeCom (get_corp_tag_list): new corp tags
    get local ones, renamed ones are renamed, deleted ones removed; local ids stay. A
    sync already waiting is answered again instead of a second one; follow it with
    `GET /v1/wecom/tags/ops/{op_id}` (its `result` holds the counts)."""
    op = await service.request_sync(session, principal.tenant, clock.now())
    return idem.respond(WeComTagOp.model_validate(op), status_code=202)


@router.get("/wecom/tags", response_model=CorpTagList)
async def list_corp_tags(principal: Reader, session: SessionDep) -> CorpTagList:
    """The corp's tag groups and tags as WeCom last showed them, in WeCom's order."""
    rows = await service.corp_tag_list(session, principal.tenant)
    groups = {
        r["wecom_id"]: CorpTagGroup(
            wecom_id=r["wecom_id"],
            name=r["name"],
            order=r["sort_order"],
            group_id=r["group_id"],
            tags=[],
        )
        for r in rows
        if r["kind"] == "group"
    }
    for r in rows:
        if r["kind"] == "tag" and r["wecom_group_id"] in groups:
            groups[r["wecom_group_id"]].tags.append(
                CorpTag(
                    wecom_id=r["wecom_id"],
                    name=r["name"],
                    order=r["sort_order"],
                    tag_id=r["tag_id"],
                )
            )
    return CorpTagList(groups=list(groups.values()))


@router.get("/wecom/tags/ops", response_model=WeComTagOpPage)
async def list_ops(
    principal: Reader,
    session: SessionDep,
    status: OpStatus | None = None,
    kind: OpKind | None = None,
    cursor: Cursor = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> WeComTagOpPage:
    """The queue's operations, oldest first: `status=failed` lists those that ran out of
    attempts (or that retrying cannot cure), with their last error."""
    ops, next_cursor = await service.list_ops(
        session, principal.tenant, status=status, kind=kind, cursor=cursor, limit=limit
    )
    return WeComTagOpPage(
        items=[WeComTagOp.model_validate(op) for op in ops], next_cursor=next_cursor
    )


@router.get("/wecom/tags/ops/{op_id}", response_model=WeComTagOp)
async def get_op(op_id: DbId, principal: Reader, session: SessionDep) -> WeComTagOp:
    """One operation: its status, attempts, last error and result."""
    return WeComTagOp.model_validate(await service.get_op(session, principal.tenant, op_id))


@router.post("/wecom/tags/ops/{op_id}/retry", response_model=WeComTagOp)
async def retry_op(
    op_id: DbId, principal: Operator, idem: IdempotencyDep, session: SessionDep
) -> JSONResponse:
    """Make a failed operation due again, its attempts reset. 409 `op_not_failed` for an
    operation that is not failed."""
    op = await service.retry_op(session, principal.tenant, op_id, clock.now())
    return idem.respond(WeComTagOp.model_validate(op))
