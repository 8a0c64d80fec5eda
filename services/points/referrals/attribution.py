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
- `already_attributed`: the invitee came through another invite first;
- `duplicate_device`, `duplicate_ip`: the inviter already has an invitee from this
  device id or IP (hashed) within the tenant's dedupe window: it counts once;
- `daily_cap`: the inviter reached the tenant's cap of invites for the (tenant-local)
  day.

Each inviter's attributions are taken one at a time (a transaction-scoped lock), so
the dedupe and the cap hold however many arrive at once. An inviter with
`velocity_per_minute` invites (refused ones too) within a minute goes under manual
review (fraud.py): their rewards wait for the decision. A valid attribution pays the
invitee's welcome reward (a ¥5 coupon by default).

The inviter's own inviter is kept (`level2_inviter_id`) for chain reports. An
attribution is keyed by what made it (`event:<outbox id>`), so a redelivered event
attributes nothing twice.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services import users
from services.points.referrals import fraud, lifecycle, rewards
from services.points.referrals.codes import live_contact
from services.points.referrals.config import ReferralConfig, load_config
from services.points.referrals.models import Referral, ReferralCode
from shared.errors import NotFound
from shared.events import publish
from shared.tenancy import tenant_timezone

STATE_PREFIX = "ref-"


@dataclass(frozen=True)
class Attribution:
    status: str  # pending, refused, duplicate (this event was handled before)
    reason: str | None = None
    inviter_id: uuid.UUID | None = None
    referral_id: int | None = None


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
    actor: str = "event",
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
    config = await load_config(session, tenant_id)
    if reason is None:
        assert inviter_id is not None
        await lifecycle.lock_inviters(session, tenant_id, [inviter_id])
        reason = await _over_limits(
            session, tenant_id, inviter_id, config, at, device_hash=device_hash, ip_hash=ip_hash
        )
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
            refused = await session.scalar(
                insert(Referral).values(**values).on_conflict_do_nothing().returning(Referral.id)
            )
            await _recorded(session, tenant_id, refused, "refused", "already_attributed", actor, at)
            return Attribution("refused", "already_attributed", inviter_id, refused)
        assert inviter_id is not None
        await _recorded(session, tenant_id, made, "pending", "attributed", actor, at)
        await publish(
            session,
            "referral.attributed",
            {
                "referral_id": made,
                "inviter_contact_id": str(inviter_id),
                "invitee_contact_id": str(invitee_id),
                "level2_inviter_contact_id": str(level2) if level2 else None,
                "source": source,
                "occurred_at": at.isoformat(),
            },
            tenant_id=tenant_id,
        )
        if config.invitee_reward is not None:
            await rewards.grant(
                session,
                tenant_id,
                key=f"welcome:{made}",
                purpose="welcome",
                contact_id=invitee_id,
                reward=config.invitee_reward,
                referral_id=made,
                at=at,
            )
        await fraud.check_velocity(session, tenant_id, inviter_id, config, at)
        return Attribution("pending", None, inviter_id, made)
    made = await session.scalar(statement.on_conflict_do_nothing().returning(Referral.id))
    if made is None:
        return Attribution("duplicate", reason, inviter_id)
    await _recorded(session, tenant_id, made, "refused", reason, actor, at)
    if inviter_id is not None and reason in fraud.COUNTED_REFUSALS:
        await fraud.check_velocity(session, tenant_id, inviter_id, config, at)
    return Attribution("refused", reason, inviter_id, made)


async def _recorded(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    referral_id: int | None,
    status: str,
    cause: str,
    actor: str,
    at: datetime,
) -> None:
    if referral_id is not None:
        await lifecycle.record_transitions(
            session, tenant_id, [(referral_id, None)], to=status, cause=cause, actor=actor, at=at
        )


async def _over_limits(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    inviter_id: uuid.UUID,
    config: ReferralConfig,
    at: datetime,
    *,
    device_hash: str | None,
    ip_hash: str | None,
) -> str | None:
    """The anti-fraud refusal of a new invite of this inviter, if any (under its lock)."""
    counted = (
        Referral.tenant_id == tenant_id,
        Referral.inviter_id == inviter_id,
        Referral.status != "refused",
    )
    if config.dedupe_window_hours:
        since = at - timedelta(hours=config.dedupe_window_hours)
        for column, value, why in (
            (Referral.device_hash, device_hash, "duplicate_device"),
            (Referral.ip_hash, ip_hash, "duplicate_ip"),
        ):
            if value is None:
                continue
            seen = await session.scalar(
                select(Referral.id)
                .where(*counted, column == value, Referral.attributed_at > since)
                .limit(1)
            )
            if seen is not None:
                return why
    zone = ZoneInfo(await tenant_timezone(session, tenant_id))
    local = at.astimezone(zone)
    day_start = local.replace(hour=0, minute=0, second=0, microsecond=0)
    today = await session.scalar(
        select(func.count())
        .select_from(Referral)
        .where(
            *counted,
            Referral.attributed_at >= day_start,
            Referral.attributed_at < day_start + timedelta(days=1),
        )
    )
    if (today or 0) >= config.daily_cap:
        return "daily_cap"
    return None


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
