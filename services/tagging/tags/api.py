"""HTTP routes of the tagging service's tags part: tag groups, tags, the tags on a
contact and bulk tagging (in/out only: rules live in service.py)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from services.tagging.tags import service
from services.tagging.tags.imports import TagImport, parse_tag_import
from services.tagging.tags.schemas import (
    BulkResult,
    BulkTagIn,
    BulkUntagIn,
    ContactTagIn,
    ContactTagOut,
    ContactTagsOut,
    Created,
    TagGroupIn,
    TagGroupList,
    TagGroupOut,
    TagGroupPatch,
    TagHolderOut,
    TagHolderPage,
    TagIn,
    TagOut,
    TagPage,
    TagPatch,
)
from shared.audit import audit_note
from shared.auth import Principal, require
from shared.deps import SessionDep
from shared.http_guard import body_limit, csv_body
from shared.idempotency import IdempotencyDep
from shared.params import Cursor, DbId
from shared.scope import contact_in_scope

# Included by services.tagging.api's router, under its /v1 prefix and tags.
router = APIRouter()

_reader = require("admin", "operator", "analyst", "staff")
_writer = require("admin", "operator")
Reader = Annotated[Principal, _reader]
Writer = Annotated[Principal, _writer]
# The path's contact id, once it is in the caller's scope (404 otherwise: shared.scope).
ReadableContact = Annotated[uuid.UUID, contact_in_scope(_reader)]
WritableContact = Annotated[uuid.UUID, contact_in_scope(_writer)]

MAX_BULK_BYTES = 8 * 1024 * 1024
_BULK_LIMIT = body_limit(MAX_BULK_BYTES, "at most 8 MB: split the contacts over several requests")


# --- tag groups -----------------------------------------------------------------------


@router.post("/tag-groups", status_code=201, response_model=Created)
async def create_group(
    body: TagGroupIn, principal: Writer, idem: IdempotencyDep, session: SessionDep
) -> JSONResponse:
    """Create a tag group. 409 `tag_group_name_taken` when the tenant has one of that name."""
    group_id = await service.create_group(session, principal.tenant, body.model_dump())
    return idem.respond(Created(id=group_id), status_code=201)


@router.get("/tag-groups", response_model=TagGroupList)
async def list_groups(principal: Reader, session: SessionDep) -> TagGroupList:
    """The tenant's tag groups, with how many tags each has."""
    groups = await service.list_groups(session, principal.tenant)
    return TagGroupList(items=[TagGroupOut.model_validate(g) for g in groups])


@router.get("/tag-groups/{group_id}", response_model=TagGroupOut)
async def get_group(group_id: DbId, principal: Reader, session: SessionDep) -> TagGroupOut:
    return TagGroupOut.model_validate(await service.get_group(session, principal.tenant, group_id))


@router.patch("/tag-groups/{group_id}", response_model=TagGroupOut)
async def patch_group(
    group_id: DbId, body: TagGroupPatch, principal: Writer, session: SessionDep
) -> TagGroupOut:
    """Change a group. A new half-life, floor or decay_manual applies to the tags its
    contacts hold from now on. 409 `tag_group_name_taken` for another group's name."""
    group = await service.update_group(session, principal.tenant, group_id, body.changes())
    return TagGroupOut.model_validate(group)


@router.delete("/tag-groups/{group_id}", status_code=204, response_class=Response)
async def delete_group(group_id: DbId, principal: Writer, session: SessionDep) -> Response:
    """Delete a group and its tags: the contacts holding them lose them (tag.removed,
    reason "deleted")."""
    await service.delete_group(session, principal.tenant, group_id)
    return Response(status_code=204)


# --- tags -----------------------------------------------------------------------------


@router.post("/tags", status_code=201, response_model=Created)
async def create_tag(
    body: TagIn, principal: Writer, idem: IdempotencyDep, session: SessionDep
) -> JSONResponse:
    """Create a tag in a group. 422 `unknown_tag_group` for a group the tenant does not
    have, `too_many_tags` beyond 10,000 tags; 409 `tag_name_taken` when the group has a
    tag of that name."""
    tag_id = await service.create_tag(session, principal.tenant, body.group_id, body.name)
    return idem.respond(Created(id=tag_id), status_code=201)


@router.get("/tags", response_model=TagPage)
async def list_tags(
    principal: Reader,
    session: SessionDep,
    group_id: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
    cursor: Cursor = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> TagPage:
    """Tags by id, of one group with `group_id`; pass `next_cursor` back as `cursor`."""
    items, next_cursor = await service.list_tags(
        session, principal.tenant, group_id=group_id, after=cursor, limit=limit
    )
    return TagPage(items=[TagOut.model_validate(t) for t in items], next_cursor=next_cursor)


@router.get("/tags/{tag_id}", response_model=TagOut)
async def get_tag(tag_id: DbId, principal: Reader, session: SessionDep) -> TagOut:
    return TagOut.model_validate(await service.get_tag(session, principal.tenant, tag_id))


@router.patch("/tags/{tag_id}", response_model=TagOut)
async def patch_tag(tag_id: DbId, body: TagPatch, principal: Writer, session: SessionDep) -> TagOut:
    """Rename a tag. 409 `tag_name_taken` when its group has another tag of that name."""
    return TagOut.model_validate(
        await service.rename_tag(session, principal.tenant, tag_id, body.name)
    )


@router.delete("/tags/{tag_id}", status_code=204, response_class=Response)
async def delete_tag(tag_id: DbId, principal: Writer, session: SessionDep) -> Response:
    """Delete a tag: the contacts holding it lose it (tag.removed, reason "deleted")."""
    await service.delete_tag(session, principal.tenant, tag_id)
    return Response(status_code=204)


@router.get("/tags/{tag_id}/contacts", response_model=TagHolderPage)
async def tag_holders(
    tag_id: DbId,
    principal: Reader,
    session: SessionDep,
    cursor: Annotated[
        uuid.UUID | None,
        Query(description="The `next_cursor` of the previous page; omit it for the first."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> TagHolderPage:
    """The live contacts holding the tag, by contact id, with their current weights; a
    staff key sees only the contacts its staff member owns."""
    items, next_cursor = await service.tag_holders(
        session, principal, tag_id, after=cursor, limit=limit
    )
    return TagHolderPage(
        items=[TagHolderOut.model_validate(i) for i in items], next_cursor=next_cursor
    )


# --- the tags on a contact ------------------------------------------------------------


@router.get("/contacts/{contact_id}/tags", response_model=ContactTagsOut)
async def contact_tags(
    contact_id: ReadableContact,
    principal: Reader,
    session: SessionDep,
    history: bool = False,
) -> ContactTagsOut:
    """The contact's tags with their current (decayed) weights; `history=true` adds each
    tag's changes (action, weight, source, cause, at)."""
    items = await service.contact_tags(session, principal.tenant, contact_id, history=history)
    return ContactTagsOut(items=[ContactTagOut.model_validate(i) for i in items])


@router.post(
    "/contacts/{contact_id}/tags",
    status_code=201,
    response_model=ContactTagOut,
    responses={200: {"model": ContactTagOut, "description": "The contact held the tag."}},
)
async def tag_contact(
    contact_id: WritableContact,
    body: ContactTagIn,
    principal: Writer,
    idem: IdempotencyDep,
    session: SessionDep,
) -> JSONResponse:
    """Tag the contact by hand: 201 when added, 200 when it held the tag (with `weight`,
    it gets that weight: tag.weight_changed). 422 `unknown_tag` for a tag the tenant
    does not have."""
    item, added = await service.tag_contact(
        session, principal.tenant, contact_id, body.tag_id, body.weight
    )
    return idem.respond(ContactTagOut.model_validate(item), status_code=201 if added else 200)


@router.delete("/contacts/{contact_id}/tags/{tag_id}", status_code=204, response_class=Response)
async def untag_contact(
    contact_id: WritableContact, tag_id: DbId, principal: Writer, session: SessionDep
) -> Response:
    """Remove a tag from the contact (tag.removed, reason "manual"); 404
    `contact_tag_not_found` when it does not hold it."""
    await service.untag_contact(session, principal.tenant, contact_id, tag_id)
    return Response(status_code=204)


# --- bulk -------------------------------------------------------------------------------


@router.post("/tags/{tag_id}/contacts", response_model=BulkResult)
@_BULK_LIMIT
async def bulk_tag(
    tag_id: DbId, body: BulkTagIn, principal: Writer, session: SessionDep, request: Request
) -> BulkResult:
    """Tag up to 100,000 contacts (or a segment's members) at once, by hand. Idempotent:
    sending it again changes and publishes nothing. Ids the tagging service does not
    know as live contacts come back in `unknown`; 422 `unknown_segment`."""
    result = await service.bulk(
        session,
        principal.tenant,
        tag_id,
        contact_ids=body.contact_ids,
        segment_id=body.segment_id,
        mode="ensure" if body.weight is None else "set",
        weight=body.weight,
    )
    audit_note(request, **{k: v for k, v in result.items() if k != "unknown"})
    return BulkResult.model_validate(result)


@router.post("/tags/{tag_id}/contacts/remove", response_model=BulkResult)
@_BULK_LIMIT
async def bulk_untag(
    tag_id: DbId, body: BulkUntagIn, principal: Writer, session: SessionDep, request: Request
) -> BulkResult:
    """Remove the tag from up to 100,000 contacts (or a segment's members) at once."""
    result = await service.bulk(
        session,
        principal.tenant,
        tag_id,
        contact_ids=body.contact_ids,
        segment_id=body.segment_id,
        mode="remove",
    )
    audit_note(request, **{k: v for k, v in result.items() if k != "unknown"})
    return BulkResult.model_validate(result)


def _csv_route(description: str) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {
                media: {
                    "schema": {"type": "string"},
                    "example": "contact_id,weight\n5d0c6c57-9b9a-4a7e-8d35-3f0b5f4f2b11,10\n",
                }
                for media in ("text/csv", "text/plain")
            },
        },
        "x-scrm-errors": [400, 401, 403, 404, 409, 413, 415, 422],
    }


async def _csv_file(request: Request) -> TagImport:
    return parse_tag_import(await csv_body(request))


@router.post(
    "/tags/{tag_id}/contacts/import",
    response_model=BulkResult,
    openapi_extra=_csv_route(
        "A CSV file (UTF-8, header row): a `contact_id` column and, optionally, "
        "`weight`; at most 100,000 rows and 8 MB. Any bad row refuses the file (422 "
        "`invalid_tag_import`, each bad row's line and reason) and nothing is applied."
    ),
)
@_BULK_LIMIT
async def import_tag(
    tag_id: DbId, principal: Writer, session: SessionDep, request: Request
) -> BulkResult:
    """Tag the contacts of a CSV file (source "import"); a row's weight, when given, is
    set. Unknown contacts come back in `unknown`."""
    parsed = await _csv_file(request)
    result = await service.bulk(
        session,
        principal.tenant,
        tag_id,
        contact_ids=parsed.contact_ids,
        segment_id=None,
        mode="ensure",
        source="import",
        weights=parsed.weights,
    )
    audit_note(request, **{k: v for k, v in result.items() if k != "unknown"})
    return BulkResult.model_validate(result)


@router.post(
    "/tags/{tag_id}/contacts/remove/import",
    response_model=BulkResult,
    openapi_extra=_csv_route(
        "A CSV file (UTF-8, header row) with a `contact_id` column (a `weight` column is "
        "ignored); at most 100,000 rows and 8 MB. Any bad row refuses the file (422 "
        "`invalid_tag_import`) and nothing is applied."
    ),
)
@_BULK_LIMIT
async def import_untag(
    tag_id: DbId, principal: Writer, session: SessionDep, request: Request
) -> BulkResult:
    """Remove the tag from the contacts of a CSV file."""
    parsed = await _csv_file(request)
    result = await service.bulk(
        session,
        principal.tenant,
        tag_id,
        contact_ids=parsed.contact_ids,
        segment_id=None,
        mode="remove",
        source="import",
    )
    audit_note(request, **{k: v for k, v in result.items() if k != "unknown"})
    return BulkResult.model_validate(result)
