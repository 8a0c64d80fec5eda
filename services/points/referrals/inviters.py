"""One inviter's referrals: counts by status, review state, and each referral with
its level (1: the contact invited them; 2: someone the contact invited did)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.points.referrals import fraud
from services.points.referrals.codes import live_contact
from services.points.referrals.models import Referral, ReferralCode

COUNTED = ("pending", "qualified", "rewarded", "revoked", "refused")


async def inviter_view(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    contact_id: uuid.UUID,
    *,
    after_id: int | None,
    limit: int,
) -> dict[str, Any]:
    contact_id = await live_contact(session, tenant_id, contact_id)
    code = await session.scalar(
        select(ReferralCode.code)
        .where(ReferralCode.tenant_id == tenant_id, ReferralCode.contact_id == contact_id)
        .limit(1)
    )
    by_status = dict(
        (
            await session.execute(
                select(Referral.status, func.count())
                .where(Referral.tenant_id == tenant_id, Referral.inviter_id == contact_id)
                .group_by(Referral.status)
            )
        ).all()
    )
    counts = {
        "attributed": sum(n for s, n in by_status.items() if s != "refused"),
        "pending": by_status.get("pending", 0),
        "qualified": by_status.get("qualified", 0),
        "succeeded": by_status.get("rewarded", 0),
        "revoked": by_status.get("revoked", 0),
        "refused": by_status.get("refused", 0),
    }
    query = select(Referral).where(
        Referral.tenant_id == tenant_id,
        or_(
            Referral.inviter_id == contact_id,
            (Referral.level2_inviter_id == contact_id) & (Referral.status != "refused"),
        ),
    )
    if after_id is not None:
        query = query.where(Referral.id < after_id)
    rows = (await session.scalars(query.order_by(Referral.id.desc()).limit(limit + 1))).all()
    referrals = [
        {
            "referral_id": r.id,
            "invitee_id": r.invitee_id,
            "status": r.status,
            "reason": r.reason,
            "level": 1 if r.inviter_id == contact_id else 2,
            "source": r.source,
            "attributed_at": r.attributed_at,
            "qualified_at": r.qualified_at,
            "hold_until": r.hold_until,
            "rewarded_at": r.rewarded_at,
            "revoked_at": r.revoked_at,
        }
        for r in rows[:limit]
    ]
    return {
        "contact_id": contact_id,
        "code": code,
        "counts": counts,
        "under_review": await fraud.under_review(session, tenant_id, contact_id),
        "referrals": referrals,
        "next_cursor": str(rows[limit - 1].id) if len(rows) > limit else None,
    }
