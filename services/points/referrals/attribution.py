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

Attributions come in batches (`attribute_many`): the batch's inviters are locked first
(transaction-scoped locks, sorted), so the dedupe and the cap hold however many arrive
at once, and each request is decided in turn as if they came one after the other. An inviter with
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
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from services import users
from services.points.referrals import fraud, lifecycle, rewards
from services.points.referrals.config import ReferralConfig, load_config
from services.points.referrals.models import Referral, ReferralCode
from shared.db import one_of
from shared.events import publish_many
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


@dataclass(frozen=True)
class Request:
    """One attribution to make: the invitee came with `code` (see `attribute`)."""

    invitee_id: uuid.UUID
    code: str
    source: str
    event_key: str
    at: datetime
    device_hash: str | None = None
    ip_hash: str | None = None
    actor: str = "event"


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
    """One attribution (`attribute_many` of one)."""
    request = Request(invitee_id, code, source, event_key, at, device_hash, ip_hash, actor)
    return (await attribute_many(session, tenant_id, [request]))[0]


async def live_contacts(
    session: AsyncSession, tenant_id: uuid.UUID, contact_ids: set[uuid.UUID]
) -> dict[uuid.UUID, uuid.UUID | None]:
    """Each contact, or its survivor when merged (five merges deep at most); None for an
    erased or unknown one."""
    live: dict[uuid.UUID, uuid.UUID | None] = {}
    current = {c: c for c in contact_ids}  # asked -> where it points now
    for _ in range(6):
        if not current:
            break
        statuses = await users.contact_statuses(session, tenant_id, set(current.values()))
        following: dict[uuid.UUID, uuid.UUID] = {}
        for asked, now in current.items():
            status = statuses[now]
            if status == "active":
                live[asked] = now
            elif status.startswith("merged:"):
                following[asked] = uuid.UUID(status.split(":", 1)[1])
            else:
                live[asked] = None
        current = following
    for asked in current:
        live[asked] = None
    return live


@dataclass
class _State:
    """What the batch's decisions read, loaded once under the inviters' locks and kept
    up to date with each attribution the batch makes."""

    inviter_of: dict[uuid.UUID, uuid.UUID]
    taken: set[uuid.UUID]
    seen: dict[tuple[uuid.UUID, str, str], list[datetime]]  # (inviter, column, hash)
    per_day: dict[tuple[uuid.UUID, str], int]  # (inviter, local day)

    def chain(self, contact: uuid.UUID) -> list[uuid.UUID]:
        """The contact's inviter, then that one's inviter (two levels, as reports go)."""
        chain: list[uuid.UUID] = []
        current = contact
        for _ in range(2):
            found = self.inviter_of.get(current)
            if found is None:
                break
            chain.append(found)
            current = found
        return chain


async def attribute_many(
    session: AsyncSession, tenant_id: uuid.UUID, requests: list[Request]
) -> list[Attribution]:
    """The tenant's attributions, in their order, in a few statements whatever their
    number: the inviters are locked first (sorted: concurrent batches cannot deadlock),
    then each request is decided as if they came one after the other."""
    if not requests:
        return []
    config = await load_config(session, tenant_id)
    zone = ZoneInfo(await tenant_timezone(session, tenant_id))
    owners = {
        row.code: row
        for row in await session.execute(
            select(ReferralCode.code, ReferralCode.contact_id, ReferralCode.created_at).where(
                ReferralCode.tenant_id == tenant_id,
                one_of(ReferralCode.code, {r.code for r in requests}),
            )
        )
    }
    live = await live_contacts(
        session,
        tenant_id,
        {r.invitee_id for r in requests} | {o.contact_id for o in owners.values()},
    )
    handled = {
        row.event_key: _Handled(row.event_key, row.reason, row.inviter_id)
        for row in await session.execute(
            select(Referral.event_key, Referral.reason, Referral.inviter_id).where(
                Referral.tenant_id == tenant_id,
                one_of(Referral.event_key, {r.event_key for r in requests}),
            )
        )
    }
    inviters = sorted(
        {
            inviter
            for r in requests
            if r.code in owners and (inviter := live.get(owners[r.code].contact_id)) is not None
        }
    )
    await lifecycle.lock_inviters(session, tenant_id, inviters)
    invitees = {i for r in requests if (i := live.get(r.invitee_id)) is not None}
    state = await _load_state(session, tenant_id, requests, inviters, invitees, config, zone)
    created = await users.contacts_created_at(session, tenant_id, invitees)

    results: list[Attribution | None] = [None] * len(requests)
    rows: list[dict[str, Any]] = []
    for n, request in enumerate(requests):
        invitee = live.get(request.invitee_id)
        if invitee is None:
            results[n] = Attribution("refused", "unknown_invitee")
            continue
        if request.event_key in handled:
            done = handled[request.event_key]
            results[n] = Attribution("duplicate", done.reason, done.inviter_id)
            continue
        owner = owners.get(request.code)
        inviter = live.get(owner.contact_id) if owner is not None else None
        reason: str | None = None
        level2 = None
        if owner is None or inviter is None:
            reason = "unknown_code"
        elif inviter == invitee:
            reason = "self_invite"
        else:
            chain = state.chain(inviter)
            level2 = chain[0] if chain else None
            when = created.get(invitee)
            if invitee in chain:
                reason = "cycle"
            elif isinstance(when, datetime) and when < owner.created_at:
                reason = "already_known"
            elif invitee in state.taken:
                reason = "already_attributed"
            else:
                reason = _over_limits(state, inviter, request, config, zone)
        handled[request.event_key] = _Handled(request.event_key, reason, inviter)
        rows.append(
            {
                "n": n,
                "invitee_id": invitee,
                "inviter_id": inviter,
                "level2_inviter_id": level2 if reason is None else None,
                "code": request.code[:16],
                "source": request.source,
                "event_key": request.event_key,
                "status": "refused" if reason else "pending",
                "reason": reason,
                "device_hash": request.device_hash,
                "ip_hash": request.ip_hash,
                "attributed_at": request.at,
            }
        )
        if reason is None:
            assert inviter is not None
            day = (inviter, _day(request.at, zone))
            state.per_day[day] = state.per_day.get(day, 0) + 1
            state.taken.add(invitee)
            state.inviter_of[invitee] = inviter
            for column, value in (("device", request.device_hash), ("ip", request.ip_hash)):
                if value is not None:
                    state.seen.setdefault((inviter, column, value), []).append(request.at)
    made = await _insert(session, tenant_id, rows)
    # Two first attributions of one invitee at once (another batch's inviter): the
    # invitee's unique index kept the other, and this one is recorded as refused.
    lost = [row for row in rows if row["event_key"] not in made and row["status"] == "pending"]
    if lost:
        for row in lost:
            row.update(status="refused", reason="already_attributed", level2_inviter_id=None)
        made.update(await _insert(session, tenant_id, lost))
    recorded = [row for row in rows if row["event_key"] in made]
    for row in recorded:
        row["id"] = made[row["event_key"]]
        results[row["n"]] = Attribution(row["status"], row["reason"], row["inviter_id"], row["id"])
    for row in rows:
        if row["event_key"] not in made:  # handled by a concurrent delivery
            results[row["n"]] = Attribution("duplicate", row["reason"], row["inviter_id"])
    await _record(session, tenant_id, recorded, requests)
    pending = [row for row in recorded if row["status"] == "pending"]
    await publish_many(
        session,
        [
            (
                "referral.attributed",
                {
                    "referral_id": row["id"],
                    "inviter_contact_id": str(row["inviter_id"]),
                    "invitee_contact_id": str(row["invitee_id"]),
                    "level2_inviter_contact_id": (
                        str(row["level2_inviter_id"]) if row["level2_inviter_id"] else None
                    ),
                    "source": row["source"],
                    "occurred_at": row["attributed_at"].isoformat(),
                },
                tenant_id,
            )
            for row in pending
        ],
    )
    if config.invitee_reward is not None and pending:
        welcome = config.invitee_reward
        await rewards.grant_many(
            session,
            tenant_id,
            [
                rewards.Grant(
                    key=f"welcome:{row['id']}",
                    purpose="welcome",
                    contact_id=row["invitee_id"],
                    reward=welcome,
                    referral_id=row["id"],
                    at=row["attributed_at"],
                )
                for row in pending
            ],
            max(row["attributed_at"] for row in pending),
        )
    counted: dict[uuid.UUID, list[datetime]] = {}
    for row in recorded:
        if row["inviter_id"] is not None and (
            row["status"] == "pending" or row["reason"] in fraud.COUNTED_REFUSALS
        ):
            counted.setdefault(row["inviter_id"], []).append(row["attributed_at"])
    await fraud.check_velocity_many(session, tenant_id, counted, config)
    assert all(r is not None for r in results)
    return [r for r in results if r is not None]


@dataclass(frozen=True)
class _Handled:
    event_key: str
    reason: str | None
    inviter_id: uuid.UUID | None


def _day(at: datetime, zone: ZoneInfo) -> str:
    return at.astimezone(zone).date().isoformat()


def _over_limits(
    state: _State, inviter: uuid.UUID, request: Request, config: ReferralConfig, zone: ZoneInfo
) -> str | None:
    """The anti-fraud refusal of a new invite of this inviter, if any."""
    if config.dedupe_window_hours:
        since = request.at - timedelta(hours=config.dedupe_window_hours)
        for column, value, why in (
            ("device", request.device_hash, "duplicate_device"),
            ("ip", request.ip_hash, "duplicate_ip"),
        ):
            if value is not None and any(
                at > since for at in state.seen.get((inviter, column, value), ())
            ):
                return why
    if state.per_day.get((inviter, _day(request.at, zone)), 0) >= config.daily_cap:
        return "daily_cap"
    return None


async def _load_state(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    requests: list[Request],
    inviters: list[uuid.UUID],
    invitees: set[uuid.UUID],
    config: ReferralConfig,
    zone: ZoneInfo,
) -> _State:
    """The batch's decisions' facts, read under the inviters' locks."""
    inviter_of: dict[uuid.UUID, uuid.UUID] = {}
    asking = set(inviters)
    for _ in range(2):  # the inviters' inviters, and theirs
        if not asking:
            break
        found = await session.execute(
            select(Referral.invitee_id, Referral.inviter_id).where(
                Referral.tenant_id == tenant_id,
                one_of(Referral.invitee_id, asking),
                Referral.status != "refused",
            )
        )
        step = {row.invitee_id: row.inviter_id for row in found if row.inviter_id is not None}
        inviter_of.update(step)
        asking = set(step.values()) - set(inviter_of)
    taken = set(
        await session.scalars(
            select(Referral.invitee_id).where(
                Referral.tenant_id == tenant_id,
                one_of(Referral.invitee_id, invitees),
                Referral.status != "refused",
            )
        )
    )
    seen: dict[tuple[uuid.UUID, str, str], list[datetime]] = {}
    devices = {r.device_hash for r in requests if r.device_hash is not None}
    ips = {r.ip_hash for r in requests if r.ip_hash is not None}
    if inviters and config.dedupe_window_hours and (devices or ips):
        since = min(r.at for r in requests) - timedelta(hours=config.dedupe_window_hours)
        found = await session.execute(
            select(
                Referral.inviter_id, Referral.device_hash, Referral.ip_hash, Referral.attributed_at
            ).where(
                Referral.tenant_id == tenant_id,
                one_of(Referral.inviter_id, inviters),
                Referral.status != "refused",
                Referral.attributed_at > since,
                or_(one_of(Referral.device_hash, devices), one_of(Referral.ip_hash, ips)),
            )
        )
        for row in found:
            if row.device_hash in devices:
                seen.setdefault((row.inviter_id, "device", row.device_hash), []).append(
                    row.attributed_at
                )
            if row.ip_hash in ips:
                seen.setdefault((row.inviter_id, "ip", row.ip_hash), []).append(row.attributed_at)
    per_day: dict[tuple[uuid.UUID, str], int] = {}
    if inviters:
        days = {
            r.at.astimezone(zone).replace(hour=0, minute=0, second=0, microsecond=0)
            for r in requests
        }
        local_day = func.timezone(zone.key, Referral.attributed_at)
        found = await session.execute(
            select(
                Referral.inviter_id,
                func.to_char(local_day, "YYYY-MM-DD").label("day"),
                func.count().label("n"),
            )
            .where(
                Referral.tenant_id == tenant_id,
                one_of(Referral.inviter_id, inviters),
                Referral.status != "refused",
                Referral.attributed_at >= min(days),
                Referral.attributed_at < max(days) + timedelta(days=1),
            )
            .group_by(Referral.inviter_id, "day")
        )
        per_day = {(row.inviter_id, row.day): row.n for row in found}
    return _State(inviter_of, taken, seen, per_day)


_INSERT = text(
    """
    INSERT INTO referrals (tenant_id, invitee_id, inviter_id, level2_inviter_id, code, source,
                           event_key, status, reason, device_hash, ip_hash, attributed_at)
    SELECT CAST(:tenant AS uuid), invitee, inviter, level2, code, source, event_key, status,
           reason, device, ip, at
      FROM unnest(CAST(:invitees AS uuid[]), CAST(:inviters AS uuid[]),
                  CAST(:level2s AS uuid[]), CAST(:codes AS text[]), CAST(:sources AS text[]),
                  CAST(:keys AS text[]), CAST(:statuses AS text[]), CAST(:reasons AS text[]),
                  CAST(:devices AS text[]), CAST(:ips AS text[]),
                  CAST(:ats AS timestamptz[]))
           WITH ORDINALITY AS u(invitee, inviter, level2, code, source, event_key, status,
                                reason, device, ip, at, n)
     ORDER BY n
    ON CONFLICT DO NOTHING
    RETURNING id, event_key
    """
)


async def _insert(
    session: AsyncSession, tenant_id: uuid.UUID, rows: list[dict[str, Any]]
) -> dict[str, int]:
    """The rows' referrals, each once: event key -> id of those written here."""
    if not rows:
        return {}
    found = await session.execute(
        _INSERT,
        {
            "tenant": tenant_id,
            "invitees": [r["invitee_id"] for r in rows],
            "inviters": [r["inviter_id"] for r in rows],
            "level2s": [r["level2_inviter_id"] for r in rows],
            "codes": [r["code"] for r in rows],
            "sources": [r["source"] for r in rows],
            "keys": [r["event_key"] for r in rows],
            "statuses": [r["status"] for r in rows],
            "reasons": [r["reason"] for r in rows],
            "devices": [r["device_hash"] for r in rows],
            "ips": [r["ip_hash"] for r in rows],
            "ats": [r["attributed_at"] for r in rows],
        },
    )
    return {row.event_key: row.id for row in found}


async def _record(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    rows: list[dict[str, Any]],
    requests: list[Request],
) -> None:
    """Each new referral's first transition: pending (attributed) or refused (its reason)."""
    await lifecycle.write_transitions(
        session,
        tenant_id,
        [
            lifecycle.Transition(
                r["id"],
                None,
                r["status"],
                r["reason"] or "attributed",
                requests[r["n"]].actor,
                r["attributed_at"],
            )
            for r in rows
        ],
    )
