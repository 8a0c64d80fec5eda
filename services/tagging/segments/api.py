"""HTTP routes of the tagging service's segments part (in/out only: rules live in
service.py)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from services.tagging import clock
from services.tagging.segments import service
from services.tagging.segments.schemas import (
    ExplainOut,
    MemberPage,
    MembersAdded,
    MembersImported,
    MembersIn,
    MembersRemoved,
    PreviewIn,
    PreviewOut,
    RejectedRow,
    SegmentCreated,
    SegmentIn,
    SegmentOut,
    SegmentPage,
    SegmentPatch,
    SegmentSummary,
)
from shared.apikeys import Principal
from shared.audit import audit_note
from shared.auth import require
from shared.db import unit_of_work
from shared.deps import SessionDep
from shared.http_guard import body_limit, csv_body
from shared.params import Cursor, DbId
from shared.runtime import Runtime
from shared.scope import contact_in_scope

router = APIRouter()

_reader = require("admin", "operator", "analyst", "staff")
Reader = Annotated[Principal, _reader]
Operator = Annotated[Principal, require("admin", "operator")]
# The explained contact, once it is in the caller's scope (404 otherwise).
ExplainedContact = Annotated[uuid.UUID, contact_in_scope(_reader)]

MAX_IMPORT_BYTES = 50 * 1024 * 1024


def _staff(principal: Principal) -> str | None:
    """A staff key sees only the members its staff member owns."""
    return principal.staff_userid or "" if principal.role == "staff" else None


@router.post(
    "/segments",
    status_code=201,
    response_model=SegmentCreated,
    openapi_extra={"x-scrm-errors": [400, 401, 403, 409, 413, 422]},
)
async def create_segment(
    body: SegmentIn, principal: Operator, session: SessionDep, request: Request
) -> SegmentCreated:
    """A dynamic segment from a rule (built at once for a small tenant, else `building`
    until the tagging worker has built it), or a static one from `contact_ids`.
    422 `invalid_rule` names the failing path (`details.path`); 409 `name_taken`."""
    segment = await service.create_segment(
        session, principal.tenant, body.name, body.rule, body.contact_ids, clock.now()
    )
    audit_note(request, segment_id=segment.id)
    return SegmentCreated(id=segment.id, kind=segment.kind, status=segment.status)


@router.get("/segments", response_model=SegmentPage)
async def list_segments(
    principal: Reader,
    session: SessionDep,
    cursor: Cursor = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> SegmentPage:
    """The tenant's segments by id; pass `next_cursor` back as `cursor`."""
    items = await service.list_segments(session, principal.tenant, cursor, limit)
    return SegmentPage(
        items=[SegmentSummary.model_validate(i) for i in items],
        next_cursor=str(items[-1]["id"]) if len(items) == limit else None,
    )


@router.post(
    "/segments/preview",
    response_model=PreviewOut,
    openapi_extra={"x-scrm-errors": [400, 401, 403, 413, 422]},
)
async def preview(body: PreviewIn, principal: Reader, session: SessionDep) -> PreviewOut:
    """How many live contacts a rule holds for now, and up to 20 of them; nothing is
    saved."""
    found = await service.preview(
        session, principal.tenant, body.rule, _staff(principal), clock.now()
    )
    return PreviewOut.model_validate(found)


@router.get("/segments/{segment_id}", response_model=SegmentOut)
async def get_segment(segment_id: DbId, principal: Reader, session: SessionDep) -> SegmentOut:
    """The segment, its build status (error and attempts when failed) and its exact
    member count."""
    view = await service.segment_view(session, principal.tenant, segment_id, _staff(principal))
    return SegmentOut.model_validate(view)


@router.patch("/segments/{segment_id}", response_model=SegmentOut)
async def patch_segment(
    segment_id: DbId, body: SegmentPatch, principal: Operator, session: SessionDep
) -> SegmentOut:
    """Rename it, or give a dynamic segment a new rule (rebuilt; only the difference
    enters or leaves). 422 `invalid_rule`, 409 `name_taken`."""
    await service.update_segment(session, principal.tenant, segment_id, body.changes(), clock.now())
    view = await service.segment_view(session, principal.tenant, segment_id, None)
    return SegmentOut.model_validate(view)


@router.delete("/segments/{segment_id}", status_code=204)
async def delete_segment(segment_id: DbId, principal: Operator, session: SessionDep) -> Response:
    """Delete the segment and its members. 409 `segment_in_use` while other segments'
    rules read it."""
    await service.delete_segment(session, principal.tenant, segment_id)
    return Response(status_code=204)


@router.post(
    "/segments/{segment_id}/rebuild",
    status_code=202,
    response_model=SegmentCreated,
    openapi_extra={"x-scrm-errors": [401, 403, 404, 422]},
)
async def rebuild(segment_id: DbId, principal: Operator, session: SessionDep) -> SegmentCreated:
    """Build the membership again from the rule over every live profile (only the
    difference changes); queued for the tagging worker unless the tenant is small."""
    segment = await service.rebuild(session, principal.tenant, segment_id, clock.now())
    return SegmentCreated(id=segment.id, kind=segment.kind, status=segment.status)


@router.get("/segments/{segment_id}/members", response_model=MemberPage)
async def members(
    segment_id: DbId,
    principal: Reader,
    session: SessionDep,
    cursor: Cursor = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> MemberPage:
    """Members in the order they entered; pass `next_cursor` back as `cursor`. A staff
    key sees the members its staff member owns."""
    items, next_cursor = await service.member_page(
        session, principal.tenant, segment_id, cursor, limit, _staff(principal)
    )
    return MemberPage.model_validate({"items": items, "next_cursor": next_cursor})


@router.post(
    "/segments/{segment_id}/members",
    response_model=MembersAdded,
    openapi_extra={"x-scrm-errors": [400, 401, 403, 404, 413, 422]},
)
async def add_members(
    segment_id: DbId, body: MembersIn, principal: Operator, session: SessionDep
) -> MembersAdded:
    """Add live contacts to a static segment (422 `unknown_contact` names the first that
    is not one; 422 `dynamic_segment` for a rule's segment)."""
    found = await service.add_members(
        session, principal.tenant, segment_id, body.contact_ids, clock.now()
    )
    return MembersAdded.model_validate(found)


@router.delete(
    "/segments/{segment_id}/members",
    response_model=MembersRemoved,
    openapi_extra={"x-scrm-errors": [400, 401, 403, 404, 413, 422]},
)
async def remove_members(
    segment_id: DbId, body: MembersIn, principal: Operator, session: SessionDep
) -> MembersRemoved:
    """Take contacts off a static segment."""
    found = await service.remove_members(
        session, principal.tenant, segment_id, body.contact_ids, clock.now()
    )
    return MembersRemoved.model_validate(found)


@router.post(
    "/segments/{segment_id}/members/import",
    response_model=MembersImported,
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "A CSV file (UTF-8, a header row) with a contact_id column, "
            "at most 50 MB.",
            "content": {
                media: {
                    "schema": {"type": "string"},
                    "example": "contact_id\n5d0c6c57-9b9a-4a7e-8d35-3f0b5f4f2b11\n",
                }
                for media in ("text/csv", "text/plain")
            },
        },
        "x-scrm-errors": [400, 401, 403, 404, 413, 415, 422],
    },
)
@body_limit(MAX_IMPORT_BYTES, "the CSV file is larger than 50 MB; split it")
async def import_members(
    segment_id: DbId, principal: Operator, session: SessionDep, request: Request
) -> MembersImported:
    """Add the contacts of a CSV file to a static segment; rows that are not a live
    contact of the tenant are reported with their line."""
    body = await csv_body(request)
    report = await service.import_members(session, principal.tenant, segment_id, body, clock.now())
    audit_note(request, rows=report.rows, added=report.added, rejected=len(report.rejected))
    return MembersImported(
        rows=report.rows,
        added=report.added,
        already_members=report.already_members,
        rejected=[RejectedRow(line=line, reason=reason) for line, reason in report.rejected],
    )


async def _export(runtime: Runtime, segment_id: int, staff: str | None) -> AsyncIterator[str]:
    # The request's session is committed before the body streams: read in one of our own.
    async with unit_of_work(runtime.sessionmaker) as session:
        pending: list[str] = []
        async for line in service.members_csv(session, segment_id, staff):
            pending.append(line)
            if len(pending) >= 2000:
                yield "".join(pending)
                pending = []
        if pending:
            yield "".join(pending)


@router.get(
    "/segments/{segment_id}/members.csv",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}}},
)
async def export_members(
    segment_id: DbId, principal: Reader, session: SessionDep, request: Request
) -> StreamingResponse:
    """Every member as CSV (contact_id, entered_at), streamed."""
    await service.get_segment(session, principal.tenant, segment_id)
    runtime: Runtime = request.app.state.runtime
    return StreamingResponse(
        _export(runtime, segment_id, _staff(principal)),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="segment-{segment_id}.csv"'},
    )


@router.get("/segments/{segment_id}/explain", response_model=ExplainOut)
async def explain(
    segment_id: DbId, contact_id: ExplainedContact, principal: Reader, session: SessionDep
) -> ExplainOut:
    """Why the contact is in the segment or not: each condition of the rule, whether it
    holds and what it saw ("order.paid 1 time in 30 days, needs ≥2"). 404 for a contact
    outside the caller's scope."""
    found = await service.explain(session, principal.tenant, segment_id, contact_id, clock.now())
    return ExplainOut.model_validate(found)
