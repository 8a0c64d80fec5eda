"""HTTP routes for ops: the sensitive-word review queue, staff tasks, and a campaign's
counts per journey, per step and per staff member (in/out only)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy import text

from services.campaigns import clock
from services.campaigns.journeys import service as journeys
from services.campaigns.sends.dispatch import notify as notify_sends
from shared.apikeys import Principal
from shared.audit import audit_note
from shared.auth import require
from shared.deps import SessionDep
from shared.errors import Conflict, NotFound
from shared.params import Cursor, DbId

router = APIRouter()

Reader = Annotated[Principal, require("admin", "operator", "analyst")]
Operator = Annotated[Principal, require("admin", "operator")]
StaffOrOps = Annotated[Principal, require("admin", "operator", "staff")]


class ReviewNotFound(NotFound):
    code = "review_not_found"


class ReviewDecided(Conflict):
    code = "review_decided"


class TaskNotFound(NotFound):
    code = "task_not_found"


class ReviewOut(BaseModel):
    id: int
    send_id: int
    campaign_id: int | None
    step_id: str | None
    contact_id: str
    channel: str
    text: str | None
    words: list[str] = Field(description="The tenant's words found in the text.")
    status: Literal["open", "approved", "rejected"]
    decided_by: str | None
    created_at: datetime
    decided_at: datetime | None


class ReviewPage(BaseModel):
    items: list[ReviewOut]
    next_cursor: str | None


_REVIEWS = """
    SELECT r.id, r.send_id, s.campaign_id, s.step_id, s.contact_id::text AS contact_id,
           s.channel, s.content->>'text' AS text, r.words, r.status, r.decided_by,
           r.created_at, r.decided_at
      FROM campaign_reviews r JOIN campaign_sends s ON s.id = r.send_id
     WHERE r.tenant_id = :tenant {where}
     ORDER BY r.id DESC
     LIMIT :limit
"""


@router.get("/campaigns/reviews", response_model=ReviewPage)
async def list_reviews(
    principal: Reader,
    session: SessionDep,
    status: Literal["open", "approved", "rejected"] | None = "open",
    cursor: Cursor = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> ReviewPage:
    """Sends the sensitive-word filter held for review (mode `review`), newest first:
    the open ones by default."""
    where = ""
    params: dict[str, Any] = {"tenant": principal.tenant, "limit": limit}
    if status is not None:
        where += " AND r.status = :status"
        params["status"] = status
    if cursor is not None:
        where += " AND r.id < :cursor"
        params["cursor"] = cursor
    rows = (await session.execute(text(_REVIEWS.format(where=where)), params)).all()
    return ReviewPage(
        items=[ReviewOut.model_validate(dict(r._mapping)) for r in rows],
        next_cursor=str(rows[-1].id) if len(rows) == limit else None,
    )


_DECIDE = text(
    """
    UPDATE campaign_reviews SET status = :status, decided_by = :who, decided_at = :now
     WHERE tenant_id = :tenant AND id = :id AND status = 'open'
    RETURNING send_id
    """
)
_RELEASE = text(
    """
    UPDATE campaign_sends SET status = :status, reason = :reason, due_at = :now, updated_at = :now
     WHERE id = :id AND status = 'deferred' AND reason = 'review'
    """
)


async def _decide(
    session: SessionDep, principal: Principal, review_id: int, approve: bool
) -> ReviewOut:
    now = clock.now()
    send_id = await session.scalar(
        _DECIDE,
        {
            "tenant": principal.tenant,
            "id": review_id,
            "status": "approved" if approve else "rejected",
            "who": f"{principal.role}:{principal.api_key_id}",
            "now": now,
        },
    )
    if send_id is None:
        found = await session.scalar(
            text("SELECT status FROM campaign_reviews WHERE tenant_id = :t AND id = :id"),
            {"t": principal.tenant, "id": review_id},
        )
        if found is None:
            raise ReviewNotFound(f"no review {review_id}")
        raise ReviewDecided(f"review {review_id} was {found} already", details={"status": found})
    await session.execute(
        _RELEASE,
        {
            "id": send_id,
            "status": "planned" if approve else "skipped",
            "reason": None if approve else "rejected",
            "now": now,
        },
    )
    if approve:
        await notify_sends(session)
    rows = (
        await session.execute(
            text(_REVIEWS.format(where=" AND r.id = :id")),
            {"tenant": principal.tenant, "id": review_id, "limit": 1},
        )
    ).all()
    return ReviewOut.model_validate(dict(rows[0]._mapping))


@router.post(
    "/campaigns/reviews/{review_id}/approve",
    response_model=ReviewOut,
    openapi_extra={"x-scrm-errors": [401, 403, 404, 409]},
)
async def approve_review(
    review_id: DbId, principal: Operator, session: SessionDep, request: Request
) -> ReviewOut:
    """The held send goes out as it is (planned now). 409 `review_decided` when it was
    decided already."""
    audit_note(request, review_id=review_id)
    return await _decide(session, principal, review_id, True)


@router.post(
    "/campaigns/reviews/{review_id}/reject",
    response_model=ReviewOut,
    openapi_extra={"x-scrm-errors": [401, 403, 404, 409]},
)
async def reject_review(
    review_id: DbId, principal: Operator, session: SessionDep, request: Request
) -> ReviewOut:
    """The held send is not sent (`skipped`, reason `rejected`)."""
    audit_note(request, review_id=review_id)
    return await _decide(session, principal, review_id, False)


# -- staff tasks ---------------------------------------------------------------------------


class TaskOut(BaseModel):
    id: int
    kind: Literal["task", "wecom_mass"]
    campaign_id: int | None
    step_id: str | None
    contact_id: str | None
    staff_userid: str | None
    title: str
    status: Literal["open", "confirmed", "overdue", "cancelled"] = Field(
        description="`overdue`: open past its due time."
    )
    due_at: datetime
    created_at: datetime
    confirmed_at: datetime | None


class TaskPage(BaseModel):
    items: list[TaskOut]
    next_cursor: str | None


_TASKS = """
    SELECT id, kind, campaign_id, step_id, contact_id::text AS contact_id, staff_userid, title,
           CASE WHEN status = 'open' AND due_at < :now THEN 'overdue' ELSE status END AS status,
           due_at, created_at, confirmed_at
      FROM campaign_staff_tasks
     WHERE tenant_id = :tenant {where}
     ORDER BY id DESC
     LIMIT :limit
"""


@router.get("/campaigns/tasks", response_model=TaskPage)
async def list_tasks(
    principal: Annotated[Principal, require("admin", "operator", "analyst", "staff")],
    session: SessionDep,
    staff_userid: Annotated[str | None, Query(max_length=64)] = None,
    campaign_id: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
    status: Literal["open", "confirmed", "overdue", "cancelled"] | None = None,
    cursor: Cursor = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> TaskPage:
    """Staff tasks of the journeys (calls to make, WeCom mass messages to confirm),
    newest first. A staff key sees only its own."""
    where = ""
    params: dict[str, Any] = {"tenant": principal.tenant, "limit": limit, "now": clock.now()}
    if principal.role == "staff":
        staff_userid = principal.staff_userid or ""
    if staff_userid is not None:
        where += " AND staff_userid = :staff"
        params["staff"] = staff_userid
    if campaign_id is not None:
        where += " AND campaign_id = :campaign"
        params["campaign"] = campaign_id
    if status == "overdue":
        where += " AND status IN ('open', 'overdue') AND (status = 'overdue' OR due_at < :now)"
    elif status == "open":
        where += " AND status = 'open' AND due_at >= :now"
    elif status is not None:
        where += " AND status = :status"
        params["status"] = status
    if cursor is not None:
        where += " AND id < :cursor"
        params["cursor"] = cursor
    rows = (await session.execute(text(_TASKS.format(where=where)), params)).all()
    return TaskPage(
        items=[TaskOut.model_validate(dict(r._mapping)) for r in rows],
        next_cursor=str(rows[-1].id) if len(rows) == limit else None,
    )


@router.post(
    "/campaigns/tasks/{task_id}/confirm",
    response_model=TaskOut,
    openapi_extra={"x-scrm-errors": [401, 403, 404]},
)
async def confirm_task(task_id: DbId, principal: StaffOrOps, session: SessionDep) -> TaskOut:
    """The staff member did it (again: it keeps its first confirmation). A WeCom mass
    message's task is confirmed by WeCom's own results, not here. A staff key confirms
    only its own tasks."""
    now = clock.now()
    params: dict[str, Any] = {"tenant": principal.tenant, "id": task_id, "now": now}
    mine = ""
    if principal.role == "staff":
        mine = " AND staff_userid = :staff"
        params["staff"] = principal.staff_userid or ""
    found = await session.scalar(
        text(
            "UPDATE campaign_staff_tasks SET status = 'confirmed', "
            "confirmed_at = coalesce(confirmed_at, :now) "
            "WHERE tenant_id = :tenant AND id = :id AND kind = 'task' "
            f"AND status IN ('open', 'overdue', 'confirmed'){mine} RETURNING id"
        ),
        params,
    )
    if found is None:
        raise TaskNotFound(f"no task {task_id} to confirm")
    rows = (
        await session.execute(text(_TASKS.format(where=" AND id = :id")), {**params, "limit": 1})
    ).all()
    return TaskOut.model_validate(dict(rows[0]._mapping))


# -- counts --------------------------------------------------------------------------------


class StepCounts(BaseModel):
    step_id: str
    at_step: int = Field(description="Contacts whose enrolment is at the step now.")
    waiting: int = Field(description="Of those, waiting (a wait, a wait_for).")
    planned: int
    deferred: int
    sent: int = Field(description="Sent or delivered.")
    delivered: int
    skipped: dict[str, int] = Field(description="Skipped sends by reason.")
    failed: int


class StaffCounts(BaseModel):
    staff_userid: str | None
    assigned: int
    confirmed: int
    overdue: int


class CampaignStats(BaseModel):
    campaign_id: int
    enrolled: int
    active: int
    waiting: int
    done: int
    exited: dict[str, int] = Field(description="Enrolments that left, by reason.")
    converted: int
    by_version: dict[str, int] = Field(description="Enrolments per version.")
    steps: list[StepCounts]
    staff: list[StaffCounts]


@router.get("/campaigns/{campaign_id}/stats", response_model=CampaignStats)
async def campaign_stats(
    campaign_id: DbId, principal: Reader, session: SessionDep
) -> CampaignStats:
    """What the journey did so far: enrolments by status (and exit reason), per
    version, per step (at the step, waiting, sends by status, skips by reason), and per
    staff member (tasks assigned, confirmed, overdue)."""
    campaign = await journeys.get(session, principal.tenant, campaign_id)
    now = clock.now()
    enrolments = (
        await session.execute(
            text(
                "SELECT status, end_reason, version, step_id, count(*) AS n "
                "FROM campaign_enrolments WHERE campaign_id = :c "
                "GROUP BY status, end_reason, version, step_id"
            ),
            {"c": campaign_id},
        )
    ).all()
    sends = (
        await session.execute(
            text(
                "SELECT step_id, status, reason, count(*) AS n FROM campaign_sends "
                "WHERE campaign_id = :c GROUP BY step_id, status, reason"
            ),
            {"c": campaign_id},
        )
    ).all()
    staff = (
        await session.execute(
            text(
                "SELECT staff_userid, count(*) AS assigned, "
                "count(*) FILTER (WHERE status = 'confirmed') AS confirmed, "
                "count(*) FILTER (WHERE status = 'overdue' OR (status = 'open' AND due_at < :now)) "
                "AS overdue FROM campaign_staff_tasks WHERE campaign_id = :c "
                "GROUP BY staff_userid ORDER BY staff_userid NULLS LAST"
            ),
            {"c": campaign_id, "now": now},
        )
    ).all()
    by_status: dict[str, int] = {}
    exited: dict[str, int] = {}
    by_version: dict[str, int] = {}
    steps: dict[str, dict[str, Any]] = {}

    def step(step_id: str) -> dict[str, Any]:
        return steps.setdefault(
            step_id,
            {
                "step_id": step_id,
                "at_step": 0,
                "waiting": 0,
                "planned": 0,
                "deferred": 0,
                "sent": 0,
                "delivered": 0,
                "skipped": {},
                "failed": 0,
            },
        )

    for row in enrolments:
        by_status[row.status] = by_status.get(row.status, 0) + row.n
        by_version[str(row.version)] = by_version.get(str(row.version), 0) + row.n
        if row.status == "exited":
            reason = row.end_reason or "unknown"
            exited[reason] = exited.get(reason, 0) + row.n
        if row.status in ("active", "waiting"):
            counts = step(row.step_id)
            counts["at_step"] += row.n
            if row.status == "waiting":
                counts["waiting"] += row.n
    for row in sends:
        if row.step_id is None:
            continue
        counts = step(row.step_id)
        if row.status == "skipped":
            reason = row.reason or "unknown"
            counts["skipped"][reason] = counts["skipped"].get(reason, 0) + row.n
        elif row.status in ("sent", "delivered"):
            counts["sent"] += row.n
            if row.status == "delivered":
                counts["delivered"] += row.n
        elif row.status in ("planned", "sending"):
            counts["planned"] += row.n
        elif row.status in ("deferred", "failed"):
            counts[row.status] += row.n
    total = sum(by_status.values())
    return CampaignStats(
        campaign_id=campaign.id,
        enrolled=total,
        active=by_status.get("active", 0),
        waiting=by_status.get("waiting", 0),
        done=by_status.get("done", 0),
        exited=exited,
        converted=by_status.get("converted", 0),
        by_version=by_version,
        steps=[StepCounts.model_validate(v) for _, v in sorted(steps.items())],
        staff=[
            StaffCounts(
                staff_userid=r.staff_userid,
                assigned=r.assigned,
                confirmed=r.confirmed,
                overdue=r.overdue,
            )
            for r in staff
        ],
    )
