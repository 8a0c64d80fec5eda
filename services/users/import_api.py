"""HTTP routes of the contacts CSV import and export (in/out only: rules live in importer.py)."""

from __future__ import annotations

import io
import uuid
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from services.users import SERVICE, importer
from shared.audit import audit_note
from shared.auth import Principal, require
from shared.db import unit_of_work
from shared.deps import SessionDep
from shared.http_guard import body_limit, csv_body
from shared.privacy import audit_unmasked_read
from shared.runtime import Runtime

MAX_IMPORT_BYTES = 50 * 1024 * 1024
_FLUSH_CHARS = 64 * 1024

# No prefix of its own: it is included into services.users.api.router, whose "/v1" applies.
import_router = APIRouter(tags=[SERVICE])

Operator = Annotated[Principal, require("admin", "operator")]
Reader = Annotated[Principal, require("admin", "operator", "analyst")]


class RejectedRow(BaseModel):
    line: int
    reason: str


class ImportReportOut(BaseModel):
    rows: int
    created: int
    updated: int
    unchanged: int
    rejected: list[RejectedRow]


@import_router.post(
    "/contacts/import",
    response_model=ImportReportOut,
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "The CSV file (UTF-8, a header row; the columns are in README's "
            "Contacts CSV section), at most 50 MB. `application/csv` is taken as well.",
            "content": {
                media: {
                    "schema": {"type": "string"},
                    "example": "phone,name,owner_staff_userid,attr.city\n"
                    "13800138000,Li Lei,zhangsan,Hangzhou\n",
                }
                for media in ("text/csv", "text/plain")
            },
        },
        "x-scrm-errors": [400, 401, 403, 409, 413, 415, 422],
    },
)
@body_limit(
    MAX_IMPORT_BYTES,
    f"the CSV file is larger than {MAX_IMPORT_BYTES // (1024 * 1024)} MB; split it",
)
async def import_contacts(
    principal: Operator, session: SessionDep, request: Request
) -> ImportReportOut:
    """Create or update contacts from a CSV file (the request body, UTF-8, header row).

    Bad rows are reported with their line and reason while the others load; a
    file with unknown columns is refused whole. Re-sending a file changes nothing.
    """
    runtime: Runtime = request.app.state.runtime
    body = await csv_body(request)
    lines = io.TextIOWrapper(io.BytesIO(body), encoding="utf-8-sig", newline="")
    report = await importer.import_contacts(session, runtime.cipher, principal.tenant, lines)
    audit_note(
        request,
        rows=report.rows,
        created=report.created,
        updated=report.updated,
        unchanged=report.unchanged,
        rejected=len(report.rejected),
    )
    return ImportReportOut(
        rows=report.rows,
        created=report.created,
        updated=report.updated,
        unchanged=report.unchanged,
        rejected=[RejectedRow(line=line, reason=reason) for line, reason in report.rejected],
    )


async def _export_stream(
    runtime: Runtime, tenant_id: uuid.UUID, unmask: bool
) -> AsyncIterator[str]:
    # The request's session is committed before the body streams: read in a session of our own.
    async with unit_of_work(runtime.sessionmaker) as session:
        pending: list[str] = []
        size = 0
        async for line in importer.export_contacts(
            session, runtime.cipher, tenant_id, unmask=unmask
        ):
            pending.append(line)
            size += len(line)
            if size >= _FLUSH_CHARS:
                yield "".join(pending)
                pending, size = [], 0
        if pending:
            yield "".join(pending)


@import_router.get("/contacts/export", response_class=StreamingResponse)
async def export_contacts(
    principal: Reader, session: SessionDep, request: Request
) -> StreamingResponse:
    """Every contact (merged ones excepted) as CSV; personal data masked unless the role
    may read it, in which case the export is audited."""
    runtime: Runtime = request.app.state.runtime
    unmask = principal.may_read_personal_data
    if unmask:
        audit_unmasked_read(
            session,
            request,
            principal,
            subject_type="contacts_export",
            subject_id="all",
            fields=list(importer.EXPORT_FIELDS),
        )
    return StreamingResponse(
        _export_stream(runtime, principal.tenant, unmask),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="contacts.csv"'},
    )
