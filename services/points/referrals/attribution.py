"""Attribution: which inviter an invitee came through.

An invitee is attributed by an `add_external_contact` whose `State` is an inviter's
channel code (`ref-<code>`), by a `referral.registered` event, or through the API.
The first valid attribution wins. One that cannot stand is recorded as `refused`
with its reason, and changes nothing else:

- `unknown_code`: no inviter of this tenant has the code;
- `self_invite`: the invitee is the inviter;
- `cycle`: the inviter came in through the invitee (directly or one level up);
- `already_known`: the invitee was a contact before the inviter's code was made
  (an invite between people who knew each other already is no acquisition);
- `already_attributed`: the invitee came through another invite first.

The inviter's own inviter is kept (`level2_inviter_id`) for chain reports. An
attribution is keyed by what made it (`event:<outbox id>`), so a redelivered event
attributes nothing twice.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services import users
from services.points.referrals.codes import live_contact
from services.points.referrals.models import Referral, ReferralCode
from shared.errors import NotFound

STATE_PREFIX = "ref-"


@dataclass(frozen=True)
class Attribution:
    status: str  # pending, refused, duplicate (this event was handled before)
    reason: str | None = None
    inviter_id: uuid.UUID | None = None


def code_of_state(state: str | None) -> str | None:
    """The invite code a channel code's State carries, if it is one."""
    if state and state.startswith(STATE_PREFIX):
        return state[len(STATE_PREFIX) :] or None
    return None


async def attribute(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    invitee_id: uuid.UUID,
    code: str,
    *,
    source: str,
    event_key: str,
    at: datetime,
    device_hash: str | None = None,
    ip_hash: str | None = None,
) -> Attribution:
    try:
        invitee_id = await live_contact(session, tenant_id, invitee_id)
    except NotFound:
        return Attribution("refused", "unknown_invitee")
    owner = (
        await session.execute(
            select(ReferralCode.contact_id, ReferralCode.created_at).where(
                ReferralCode.tenant_id == tenant_id, ReferralCode.code == code
            )
        )
    ).first()
    inviter_id = None
    reason = None
    level2 = None
    if owner is None:
        reason = "unknown_code"
    else:
        try:
            inviter_id = await live_contact(session, tenant_id, owner.contact_id)
        except NotFound:
            reason = "unknown_code"
    if reason is None and inviter_id == invitee_id:
        reason = "self_invite"
    if reason is None:
        assert inviter_id is not None
        chain = await _inviters_of(session, tenant_id, inviter_id)
        if invitee_id in chain:
            reason = "cycle"
        level2 = chain[0] if chain else None
    if reason is None:
        assert owner is not None and inviter_id is not None
        created = (await users.contacts_created_at(session, tenant_id, [invitee_id])).get(
            invitee_id
        )
        if isinstance(created, datetime) and created < owner.created_at:
            reason = "already_known"
    if reason is None:
        assert inviter_id is not None
        taken = await session.scalar(
            select(Referral.id).where(
                Referral.tenant_id == tenant_id,
                Referral.invitee_id == invitee_id,
                Referral.status != "refused",
            )
        )
        if taken is not None:
            reason = "already_attributed"
    values = {
        "tenant_id": tenant_id,
        "invitee_id": invitee_id,
        "inviter_id": inviter_id,
        "level2_inviter_id": level2 if reason is None else None,
        "code": code[:16],
        "source": source,
        "event_key": event_key,
        "status": "refused" if reason else "pending",
        "reason": reason,
        "device_hash": device_hash,
        "ip_hash": ip_hash,
        "attributed_at": at,
    }
    statement = insert(Referral).values(**values)
    if reason is None:
        # Two first attributions at once: the invitee's unique index keeps one, the
        # other is recorded as refused.
        made = await session.scalar(statement.on_conflict_do_nothing().returning(Referral.id))
        if made is None:
            already = await session.scalar(
                select(Referral.id).where(
                    Referral.tenant_id == tenant_id, Referral.event_key == event_key
                )
            )
            if already is not None:
                return Attribution("duplicate")
            values.update(status="refused", reason="already_attributed", level2_inviter_id=None)
            await session.execute(insert(Referral).values(**values).on_conflict_do_nothing())
            return Attribution("refused", "already_attributed", inviter_id)
        return Attribution("pending", None, inviter_id)
    made = await session.scalar(statement.on_conflict_do_nothing().returning(Referral.id))
    return Attribution("refused" if made is not None else "duplicate", reason, inviter_id)


async def _inviters_of(
    session: AsyncSession, tenant_id: uuid.UUID, contact_id: uuid.UUID
) -> list[uuid.UUID]:
    """The contact's inviter, then that one's inviter (two levels, as reports go)."""
    chain: list[uuid.UUID] = []
    current = contact_id
    for _ in range(2):
        found = await session.scalar(
            select(Referral.inviter_id).where(
                Referral.tenant_id == tenant_id,
                Referral.invitee_id == current,
                Referral.status != "refused",
            )
        )
        if found is None:
            break
        chain.append(found)
        current = found
    return chain
