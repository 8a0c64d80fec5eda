"""Manual review of inviters whose invites come too fast.

An inviter with `velocity_per_minute` invites (50 by default; attributions refused as
duplicates or over the cap count too) within a minute goes under review: one open
review per inviter, and its referrals are not rewarded while it is open (their hold
may end; they wait). Ops decide:

- approve: the rewards proceed (the hold expiry job pays those whose hold ended);
- reject: the inviter's referrals not yet revoked are revoked (`fraud`, with the
  reason given), and what they paid is clawed back.

A decision is made once; every decision is in the audit log (the route's audited
request) and on the review itself (who, when, why). Invites after an approval
count afresh: a new burst opens a new review.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.points.referrals import lifecycle
from services.points.referrals.config import ReferralConfig
from services.points.referrals.models import Referral, ReferralReview
from shared.errors import Conflict, NotFound

# Refusals that are still invites of the inviter (and so count towards the velocity).
COUNTED_REFUSALS = ("duplicate_device", "duplicate_ip", "daily_cap", "already_known")
WINDOW = timedelta(minutes=1)


class ReviewNotFound(NotFound):
    code = "review_not_found"


class ReviewDecided(Conflict):
    code = "review_decided"


async def check_velocity_many(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    invites: dict[uuid.UUID, list[datetime]],
    config: ReferralConfig,
) -> list[int]:
    """Open a review for each of these inviters whose invites reach the threshold within
    a minute around the times of its new invites (the caller holds their locks): the
    ids of the reviews opened. The busiest minute counts, whatever order the invites
    arrive in (events are attributed at their own time, and may come late or out of
    order); after an approval only the invites since count."""
    if not invites:
        return []
    inviters = sorted(invites)
    found = await session.execute(
        text(
            """
            WITH asked AS (
                SELECT i, lo, hi
                  FROM unnest(CAST(:inviters AS uuid[]), CAST(:los AS timestamptz[]),
                              CAST(:his AS timestamptz[])) AS u(i, lo, hi)
            ), since AS (
                SELECT a.i, a.hi,
                       greatest(a.lo, COALESCE((
                           SELECT max(v.decided_at) FROM referral_reviews v
                            WHERE v.tenant_id = :t AND v.inviter_id = a.i
                              AND v.status = 'approved'), a.lo)) AS lo
                  FROM asked a
            ), windows AS (
                SELECT s.i, count(*) OVER (
                           PARTITION BY s.i ORDER BY r.attributed_at
                           RANGE BETWEEN INTERVAL '59.999999 seconds' PRECEDING AND CURRENT ROW
                       ) AS n
                  FROM since s
                  JOIN referrals r ON r.tenant_id = :t AND r.inviter_id = s.i
                   AND r.attributed_at > s.lo AND r.attributed_at < s.hi
                   AND (r.status <> 'refused' OR r.reason = ANY(CAST(:counted AS text[])))
            )
            SELECT i, max(n) AS n FROM windows GROUP BY i HAVING max(n) >= :threshold ORDER BY i
            """
        ),
        {
            "t": tenant_id,
            "inviters": inviters,
            "los": [min(invites[i]) - WINDOW for i in inviters],
            "his": [max(invites[i]) + WINDOW for i in inviters],
            "counted": list(COUNTED_REFUSALS),
            "threshold": config.velocity_per_minute,
        },
    )
    over = found.all()
    if not over:
        return []
    opened = await session.execute(
        insert(ReferralReview)
        .values(
            [
                {
                    "tenant_id": tenant_id,
                    "inviter_id": row.i,
                    "status": "open",
                    "trigger": "velocity",
                    "details": {
                        "invites_in_minute": row.n,
                        "threshold": config.velocity_per_minute,
                    },
                    "opened_at": max(invites[row.i]),
                }
                for row in over
            ]
        )
        .on_conflict_do_nothing()
        .returning(ReferralReview.id)
    )
    return list(opened.scalars())


def review_view(row: ReferralReview) -> dict[str, Any]:
    return {
        "id": row.id,
        "inviter_id": row.inviter_id,
        "status": row.status,
        "trigger": row.trigger,
        "details": row.details,
        "opened_at": row.opened_at,
        "decided_at": row.decided_at,
        "decided_by": row.decided_by,
        "decision_reason": row.decision_reason,
    }


async def list_reviews(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    *,
    status: str | None,
    after_id: int | None,
    limit: int,
) -> tuple[list[dict[str, Any]], int | None]:
    """Reviews newest first (by id; the cursor is the last id shown)."""
    query = select(ReferralReview).where(ReferralReview.tenant_id == tenant_id)
    if status is not None:
        query = query.where(ReferralReview.status == status)
    if after_id is not None:
        query = query.where(ReferralReview.id < after_id)
    rows = (await session.scalars(query.order_by(ReferralReview.id.desc()).limit(limit + 1))).all()
    page = [review_view(r) for r in rows[:limit]]
    return page, (rows[limit - 1].id if len(rows) > limit else None)


async def decide(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    review_id: int,
    *,
    approve: bool,
    reason: str | None,
    actor: str,
    at: datetime,
) -> dict[str, Any]:
    """Approve or reject an open review (404 unknown, 409 `review_decided`)."""
    inviter = await session.scalar(
        select(ReferralReview.inviter_id).where(
            ReferralReview.tenant_id == tenant_id, ReferralReview.id == review_id
        )
    )
    if inviter is not None:  # the inviter first: the one lock order (lifecycle.py)
        await lifecycle.lock_inviters(session, tenant_id, [inviter])
    row = await session.scalar(
        select(ReferralReview)
        .where(ReferralReview.tenant_id == tenant_id, ReferralReview.id == review_id)
        .with_for_update()
    )
    if row is None:
        raise ReviewNotFound(f"no review {review_id}")
    if row.status != "open":
        raise ReviewDecided(
            f"review {review_id} was {row.status} already",
            details={"status": row.status, "decided_by": row.decided_by},
        )
    revoked: list[int] = []
    if not approve:
        open_ids = list(
            await session.scalars(
                select(Referral.id).where(
                    Referral.tenant_id == tenant_id,
                    Referral.inviter_id == row.inviter_id,
                    Referral.status.in_(("pending", "qualified")),
                )
            )
        )
        revoked = await lifecycle.revoke(
            session,
            tenant_id,
            open_ids,
            cause="fraud",
            actor=actor,
            at=at,
            within_hold=False,
            details={"review_id": review_id, "reason": reason},
        )
    await session.execute(
        update(ReferralReview)
        .where(ReferralReview.id == review_id)
        .values(
            status="approved" if approve else "rejected",
            decided_at=at,
            decided_by=actor,
            decision_reason=reason,
        )
    )
    await session.refresh(row)
    return review_view(row) | {"revoked": len(revoked)}


async def under_review(session: AsyncSession, tenant_id: uuid.UUID, inviter_id: uuid.UUID) -> bool:
    found = await session.scalar(
        select(ReferralReview.id).where(
            ReferralReview.tenant_id == tenant_id,
            ReferralReview.inviter_id == inviter_id,
            ReferralReview.status == "open",
        )
    )
    return found is not None
