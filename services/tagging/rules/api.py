"""HTTP routes of tag rules (in/out only: the rules of rules live in service.py)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse

from services.tagging.rules import service
from services.tagging.rules.schemas import (
    DryRun,
    FiringOut,
    FiringPage,
    RuleCreated,
    RuleIn,
    RuleOut,
    RulePage,
    RulePatch,
    RuleStatus,
)
from shared.auth import Principal, require
from shared.deps import SessionDep
from shared.idempotency import IdempotencyDep
from shared.params import Cursor, DbId

# Included by services.tagging.api's router, under its /v1 prefix and tags.
router = APIRouter()

Reader = Annotated[Principal, require("admin", "operator", "analyst")]
Writer = Annotated[Principal, require("admin", "operator")]

# Routes by id that take no body and cannot conflict.
_BY_ID_NO_BODY = {"x-scrm-errors": [401, 403, 404, 422]}


@router.post(
    "/tag-rules",
    status_code=201,
    response_model=RuleCreated,
    openapi_extra={"x-scrm-errors": [400, 401, 403, 409, 413, 422]},
)
async def create_rule(
    body: RuleIn, principal: Writer, idem: IdempotencyDep, session: SessionDep
) -> JSONResponse:
    """Add a tag rule. 422 naming the field for an unknown event type, tag or group;
    409 `rule_name_taken` when the tenant has a rule of this name."""
    rule_id = await service.create_rule(session, principal.tenant, body)
    return idem.respond(RuleCreated(id=rule_id), status_code=201)


@router.get("/tag-rules", response_model=RulePage)
async def list_rules(
    principal: Reader,
    session: SessionDep,
    status: RuleStatus | None = None,
    event_type: Annotated[str | None, Query(min_length=1, max_length=100)] = None,
    cursor: Cursor = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> RulePage:
    """The tenant's tag rules by id (the defaults of SPEC §2 among them, installed the
    first time); pass `next_cursor` back as `cursor` for the next page."""
    rows, next_cursor = await service.list_rules(
        session, principal.tenant, status=status, event_type=event_type, cursor=cursor, limit=limit
    )
    return RulePage(items=[service.rule_out(r) for r in rows], next_cursor=next_cursor)


@router.post(
    "/tag-rules/dry-run",
    response_model=DryRun,
    openapi_extra={"x-scrm-errors": [400, 401, 403, 413, 422]},
)
async def dry_run_unsaved(body: RuleIn, principal: Reader, session: SessionDep) -> DryRun:
    """How many contacts an unsaved rule would tag now (nothing is stored)."""
    return await service.dry_run(session, principal.tenant, body)


@router.get("/tag-rules/{rule_id}", response_model=RuleOut)
async def get_rule(rule_id: DbId, principal: Reader, session: SessionDep) -> RuleOut:
    return service.rule_out(await service.get_rule(session, principal.tenant, rule_id))


@router.patch(
    "/tag-rules/{rule_id}",
    response_model=RuleOut,
    openapi_extra={"x-scrm-errors": [400, 401, 403, 404, 409, 413, 422]},
)
async def patch_rule(
    rule_id: DbId, body: RulePatch, principal: Writer, session: SessionDep
) -> RuleOut:
    """Change fields of a rule (`{"status": "paused"}` pauses it); the result is checked
    as a whole rule. 409 `rule_name_taken` for another rule's name."""
    row = await service.update_rule(session, principal.tenant, rule_id, body)
    return service.rule_out(row)


@router.delete(
    "/tag-rules/{rule_id}", status_code=204, response_class=Response, openapi_extra=_BY_ID_NO_BODY
)
async def delete_rule(rule_id: DbId, principal: Writer, session: SessionDep) -> Response:
    """Delete a rule; the tags it raised stay."""
    await service.delete_rule(session, principal.tenant, rule_id)
    return Response(status_code=204)


@router.post("/tag-rules/{rule_id}/pause", response_model=RuleOut, openapi_extra=_BY_ID_NO_BODY)
async def pause_rule(rule_id: DbId, principal: Writer, session: SessionDep) -> RuleOut:
    """Pause a rule: it fires on no event until resumed (nor later on those meanwhile)."""
    return service.rule_out(await service.set_status(session, principal.tenant, rule_id, "paused"))


@router.post("/tag-rules/{rule_id}/resume", response_model=RuleOut, openapi_extra=_BY_ID_NO_BODY)
async def resume_rule(rule_id: DbId, principal: Writer, session: SessionDep) -> RuleOut:
    return service.rule_out(await service.set_status(session, principal.tenant, rule_id, "active"))


@router.post("/tag-rules/{rule_id}/dry-run", response_model=DryRun, openapi_extra=_BY_ID_NO_BODY)
async def dry_run_saved(rule_id: DbId, principal: Reader, session: SessionDep) -> DryRun:
    """How many contacts the rule would tag now: live contacts with at least
    `min_count` qualifying events in the last `window_days` (per property value for a
    derived tag)."""
    return await service.dry_run_saved(session, principal.tenant, rule_id)


@router.get("/tag-rules/{rule_id}/firings", response_model=FiringPage)
async def list_firings(
    rule_id: DbId,
    principal: Reader,
    session: SessionDep,
    outcome: Literal["fired", "skipped"] | None = None,
    cursor: Cursor = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> FiringPage:
    """The source events the rule fired on, or skipped (with why), in the order recorded;
    pass `next_cursor` back as `cursor` for the next page."""
    rows, next_cursor = await service.list_firings(
        session, principal.tenant, rule_id, outcome=outcome, cursor=cursor, limit=limit
    )
    return FiringPage(items=[FiringOut.model_validate(r) for r in rows], next_cursor=next_cursor)
