"""WeCom channel codes (联系我) for inviters.

When a contact's invite code is made, a job (`make_channel_code`) asks WeCom for a
"contact me" QR code of the staff member who follows the inviter (`add_contact_way`,
type single), whose `state` is `ref-<code>`: a customer who scans it and adds that
staff member comes with the State, and the add attributes them to the inviter
(attribution.py). Tenants without a WeCom app secret, and inviters no staff member
follows, get none (`qr_error` says why). A WeCom error the job cannot cure is
recorded; an unreachable WeCom is retried by the scheduler.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services import users
from services.points.referrals.attribution import STATE_PREFIX
from services.points.referrals.models import ReferralCode
from services.users.wecom_client import WeComApiError, WeComClient, WeComUnavailable
from shared.scheduler import RetryLater, ScheduledWork, scheduled_job

JOB = "make_channel_code"


async def add_contact_way(client: WeComClient, staff: str, state: str) -> dict[str, Any]:
    return await client._call(
        "POST",
        "/cgi-bin/externalcontact/add_contact_way",
        json={
            "type": 1,
            "scene": 2,
            "state": state,
            "user": [staff],
            "skip_verify": True,
            "remark": "invite",
        },
    )


@scheduled_job("points", JOB)
async def make_channel_code(session: AsyncSession, work: ScheduledWork) -> None:
    assert work.tenant_id is not None
    tenant_id = uuid.UUID(str(work.tenant_id))
    contact_id = uuid.UUID(str(work.args["contact_id"]))
    row = await session.scalar(
        select(ReferralCode).where(
            ReferralCode.tenant_id == tenant_id, ReferralCode.contact_id == contact_id
        )
    )
    if row is None or row.qr_code is not None:
        return
    handles = await users.wecom_handles(session, tenant_id, [contact_id])
    staff = handles[contact_id][1] if contact_id in handles else None
    if staff is None:
        facts = await users.message_facts(session, tenant_id, [contact_id])
        staff = (facts.get(contact_id) or {}).get("owner")
    if not staff:
        await _store(session, row, error="no_staff")
        return
    client = await users.wecom_api_client(session, tenant_id, max_retries=1)
    if client is None:
        await _store(session, row, error="no_wecom")
        return
    async with client:
        try:
            answer = await add_contact_way(client, staff, f"{STATE_PREFIX}{row.code}")
        except WeComApiError as exc:
            await _store(session, row, error=f"wecom_{exc.errcode}")
            return
        except WeComUnavailable as exc:
            raise RetryLater(60, f"WeCom unavailable: {exc}") from exc
    await _store(
        session, row, qr_code=str(answer.get("qr_code") or ""), config=answer.get("config_id")
    )


async def _store(
    session: AsyncSession,
    row: ReferralCode,
    *,
    qr_code: str | None = None,
    config: Any = None,
    error: str | None = None,
) -> None:
    await session.execute(
        update(ReferralCode)
        .where(ReferralCode.tenant_id == row.tenant_id, ReferralCode.contact_id == row.contact_id)
        .values(
            qr_code=qr_code or None,
            wecom_config_id=None if config is None else str(config),
            qr_error=error,
        )
    )
