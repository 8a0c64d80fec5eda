"""Invite codes and share links.

`code_for` gives a live contact its code, made on the first request and the same
afterwards (concurrent first requests get one code: the insert keeps the first).
A merged contact's request is answered with its survivor's code; an erased or
unknown contact has none. The share link is `SCRM_POINTS_REFERRAL_LINK_BASE` + the
code; the tenant's front end resolves it. A new code's WeCom channel code is made by
a job (channel_codes.py) and shows once made (`qr_code`).
"""

from __future__ import annotations

import secrets
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services import users
from services.points.ledger.booking import now as clock_now
from services.points.referrals.models import ReferralCode
from services.points.settings import points_settings
from shared.errors import NotFound
from shared.scheduler import schedule

# 32 digits and capitals, without 0, 1, I and O (which read like one another).
ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"
LENGTH = 10  # 10 x 5 bits: 2**50 codes
CODE_PATTERN = rf"^[{ALPHABET}]{{{LENGTH}}}$"


def new_code() -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(LENGTH))


async def live_contact(
    session: AsyncSession, tenant_id: uuid.UUID, contact_id: uuid.UUID
) -> uuid.UUID:
    """The contact, or its survivor when merged; 404 for an erased or unknown one."""
    seen = 0
    while True:
        status = await users.contact_status(session, tenant_id, contact_id)
        if status == "active":
            return contact_id
        if status.startswith("merged:") and seen < 5:
            contact_id = uuid.UUID(status.split(":", 1)[1])
            seen += 1
            continue
        raise NotFound(f"no contact {contact_id}")


async def code_for(
    session: AsyncSession, tenant_id: uuid.UUID, contact_id: uuid.UUID
) -> dict[str, Any]:
    contact_id = await live_contact(session, tenant_id, contact_id)
    for _ in range(5):  # a clash of random codes (2**-50 a time) tries another
        made = await session.scalar(
            insert(ReferralCode)
            .values(tenant_id=tenant_id, contact_id=contact_id, code=new_code())
            .on_conflict_do_nothing()
            .returning(ReferralCode.code)
        )
        found = await session.execute(
            select(ReferralCode.code, ReferralCode.created_at, ReferralCode.qr_code).where(
                ReferralCode.tenant_id == tenant_id, ReferralCode.contact_id == contact_id
            )
        )
        row = found.first()
        if row is not None:
            if made == row.code:
                # A new code: its WeCom channel code is made by a job (channel_codes.py).
                await schedule(
                    session,
                    service="points",
                    job="make_channel_code",
                    due_at=clock_now(),
                    args={"contact_id": str(contact_id)},
                    tenant_id=tenant_id,
                    dedupe_key=f"channel_code:{tenant_id}:{contact_id}",
                )
            return {
                "contact_id": contact_id,
                "code": row.code,
                "link": points_settings().referral_link_base.rstrip("/") + "/" + row.code,
                "created_at": row.created_at,
                "qr_code": row.qr_code,
                "created": made == row.code,
            }
    raise RuntimeError("no invite code could be made")


async def inviter_of(session: AsyncSession, tenant_id: uuid.UUID, code: str) -> uuid.UUID | None:
    """The contact whose code this is, in this tenant (another tenant's code: None)."""
    found = await session.scalar(
        select(ReferralCode.contact_id).where(
            ReferralCode.tenant_id == tenant_id, ReferralCode.code == code
        )
    )
    return found
