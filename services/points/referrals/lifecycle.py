"""A referral's course after attribution: pending → qualified → rewarded, or revoked.

- qualified: the invitee's first paid order (`order.paid`). The hold starts: it ends
  `hold_days` later (tenant configuration, 7 by default).
- rewarded: the hold ended without a revocation and the inviter is not under review.
  The hold expiry job (`reward_due`) rewards due referrals set-based: the inviter's
  invite points (the points rules' invite earning, 200 by default) booked for many
  referrals in a few statements, the tiers their succeeded counts reach, and one
  `referral.succeeded` each. With a hold of 0 days the qualifying order rewards at once.
- revoked: within the hold, the invitee deleted the staff member (`del_follow_user`)
  or refunded the qualifying order in full; or ops found the referral fraudulent (at
  any time). What it paid is clawed back (rewards.py), and tier rewards whose count the
  inviter no longer reaches with it.

Every transition is recorded (`referral_transitions`, with its cause) and published
(`referral.qualified`, `referral.succeeded`, `referral.revoked`).

Locks, in one order everywhere: the inviters (transaction-scoped advisory locks, under
which counts are read and tiers paid), then referral rows, then accounts.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from services.points.ledger import earning
from services.points.referrals import rewards
from services.points.referrals.config import ReferralConfig, load_config
from services.points.referrals.models import Referral, ReferralReward
from services.points.rules.service import load_rules
from shared.db import one_of
from shared.events import notify_relay, publish_many

BATCH = 5000


async def lock_inviters(
    session: AsyncSession, tenant_id: uuid.UUID, inviter_ids: Sequence[uuid.UUID]
) -> None:
    """Serialise work on these inviters' counts (sorted: one lock order)."""
    keys = sorted({f"referral:{tenant_id}:{i}" for i in inviter_ids})
    if keys:
        await session.execute(
            text(
                "SELECT pg_advisory_xact_lock(hashtextextended(k, 0)) "
                "FROM unnest(CAST(:keys AS text[])) AS u(k) ORDER BY k"
            ),
            {"keys": keys},
        )


_TRANSITIONS = text(
    """
    INSERT INTO referral_transitions
           (tenant_id, referral_id, from_status, to_status, cause, details, actor, at)
    SELECT CAST(:tenant AS uuid), r, f, t, c, CAST(d AS jsonb), a, at
      FROM unnest(CAST(:ids AS bigint[]), CAST(:froms AS text[]), CAST(:tos AS text[]),
                  CAST(:causes AS text[]), CAST(:details AS text[]), CAST(:actors AS text[]),
                  CAST(:ats AS timestamptz[]))
           AS u(r, f, t, c, d, a, at)
    """
)


@dataclass(frozen=True)
class Transition:
    """One referral's move from a status (None: it was just made) to another."""

    referral_id: int
    from_status: str | None
    to_status: str
    cause: str
    actor: str
    at: datetime
    details: dict[str, Any] | None = None


async def write_transitions(
    session: AsyncSession, tenant_id: uuid.UUID, transitions: Sequence[Transition]
) -> None:
    """Record these transitions, in one statement."""
    if not transitions:
        return
    await session.execute(
        _TRANSITIONS,
        {
            "tenant": tenant_id,
            "ids": [t.referral_id for t in transitions],
            "froms": [t.from_status for t in transitions],
            "tos": [t.to_status for t in transitions],
            "causes": [t.cause for t in transitions],
            "details": [json.dumps(t.details or {}) for t in transitions],
            "actors": [t.actor for t in transitions],
            "ats": [t.at for t in transitions],
        },
    )


async def record_transitions(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    changes: Sequence[tuple[int, str | None]],
    *,
    to: str,
    cause: str,
    actor: str,
    at: datetime,
    details: Sequence[dict[str, Any]] | None = None,
) -> None:
    """(referral id, from status) changes to `to`, for one cause, in one statement."""
    each: list[dict[str, Any] | None] = list(details) if details else [None] * len(changes)
    await write_transitions(
        session,
        tenant_id,
        [
            Transition(referral_id, from_status, to, cause, actor, at, d)
            for (referral_id, from_status), d in zip(changes, each, strict=True)
        ],
    )


# Each pending referral of these invitees, qualified by its invitee's first paid order.
_QUALIFY = text(
    """
    UPDATE referrals r
       SET status = 'qualified', qualified_at = u.at, hold_until = u.at + :hold,
           order_id = u.o, order_amount_fen = u.a
      FROM unnest(CAST(:invitees AS uuid[]), CAST(:ats AS timestamptz[]),
                  CAST(:orders AS text[]), CAST(:amounts AS bigint[])) AS u(c, at, o, a)
     WHERE r.tenant_id = :t AND r.invitee_id = u.c AND r.status = 'pending'
    RETURNING r.id, r.invitee_id, r.inviter_id, r.order_id, r.order_amount_fen,
              r.qualified_at, r.hold_until
    """
)


# -- qualification ------------------------------------------------------------------------


@dataclass(frozen=True)
class PaidOrder:
    invitee_id: uuid.UUID
    order_id: str
    amount_fen: int
    paid_at: datetime
    event_id: str


async def qualify(
    session: AsyncSession, tenant_id: uuid.UUID, orders: list[PaidOrder], *, now: datetime
) -> list[int]:
    """The invitees' first paid orders qualify their pending referrals: the ids qualified."""
    first: dict[uuid.UUID, PaidOrder] = {}
    for order in sorted(orders, key=lambda o: o.paid_at):
        first.setdefault(order.invitee_id, order)
    if not first:
        return []
    inviters = (
        await session.scalars(
            select(Referral.inviter_id).where(
                Referral.tenant_id == tenant_id,
                one_of(Referral.invitee_id, first),
                Referral.status == "pending",
            )
        )
    ).all()
    if not inviters:
        return []
    await lock_inviters(session, tenant_id, [i for i in inviters if i is not None])
    config = await load_config(session, tenant_id)
    orders_in = list(first.values())
    rows = (
        await session.execute(
            _QUALIFY,
            {
                "t": tenant_id,
                "hold": timedelta(days=config.hold_days),
                "invitees": [o.invitee_id for o in orders_in],
                "ats": [o.paid_at for o in orders_in],
                "orders": [o.order_id for o in orders_in],
                "amounts": [o.amount_fen for o in orders_in],
            },
        )
    ).all()
    if not rows:
        return []
    qualified = [row.id for row in rows]
    payloads = [
        {
            "referral_id": row.id,
            "inviter_contact_id": str(row.inviter_id),
            "invitee_contact_id": str(row.invitee_id),
            "order_id": row.order_id,
            "amount_fen": row.order_amount_fen,
            "occurred_at": row.qualified_at.isoformat(),
            "hold_until": row.hold_until.isoformat(),
        }
        for row in rows
    ]
    await record_transitions(
        session,
        tenant_id,
        [(i, "pending") for i in qualified],
        to="qualified",
        cause="order_paid",
        actor="event",
        at=now,
        details=[{"order_id": r.order_id, "event_id": first[r.invitee_id].event_id} for r in rows],
    )
    await publish_many(session, [("referral.qualified", p, tenant_id) for p in payloads])
    if config.hold_days == 0:
        await reward_due(session, now=now, tenant_id=tenant_id, ids=qualified)
    return qualified


# -- the hold's end -----------------------------------------------------------------------

# Candidates, unlocked, the earliest due first: their inviters are locked first (the one
# lock order), then the referrals still due are rewarded. A run may take one of `parts`
# partitions of the inviters, so that runs of different partitions never wait on each
# other.
_DUE = text(
    """
    SELECT r.id, r.tenant_id, r.inviter_id FROM referrals r
     WHERE r.status = 'qualified' AND r.hold_until <= :now
       AND (CAST(:tenant AS uuid) IS NULL OR r.tenant_id = CAST(:tenant AS uuid))
       AND (CAST(:ids AS bigint[]) IS NULL OR r.id = ANY(CAST(:ids AS bigint[])))
       AND (CAST(:parts AS int) = 1
            OR mod(abs(hashtext(CAST(r.inviter_id AS text))), CAST(:parts AS int))
               = CAST(:part AS int))
     ORDER BY r.hold_until, r.id
     LIMIT :limit
    """
)

# The due referrals rewarded, their transitions recorded and `referral.succeeded`
# published, in one statement.
_REWARD = text(
    """
    WITH done AS (
        UPDATE referrals r SET status = 'rewarded', rewarded_at = :now
         WHERE r.id = ANY(CAST(:ids AS bigint[])) AND r.status = 'qualified'
           AND r.hold_until <= :now
           AND NOT EXISTS (
                SELECT 1 FROM referral_reviews v
                 WHERE v.tenant_id = r.tenant_id AND v.inviter_id = r.inviter_id
                   AND v.status = 'open')
        RETURNING r.id, r.tenant_id, r.inviter_id, r.invitee_id
    ), moved AS (
        INSERT INTO referral_transitions
               (tenant_id, referral_id, from_status, to_status, cause, details, actor, at)
        SELECT tenant_id, id, 'qualified', 'rewarded', 'hold_ended', '{}'::jsonb, 'job', :now
          FROM done
    ), published AS (
        INSERT INTO outbox_events (event_id, tenant_id, type, payload)
        SELECT gen_random_uuid(), tenant_id, 'referral.succeeded',
               jsonb_build_object('referral_id', id, 'inviter_contact_id', inviter_id,
                                  'invitee_contact_id', invitee_id,
                                  'occurred_at', CAST(:occurred AS text))
          FROM done ORDER BY id
    )
    SELECT id, inviter_id, invitee_id FROM done ORDER BY id
    """
)

_INVITE_REWARDS = text(
    """
    INSERT INTO referral_rewards
           (tenant_id, reward_key, purpose, referral_id, contact_id, kind, name, points,
            status, entry_id, created_at, granted_at)
    SELECT CAST(:tenant AS uuid), 'invite:' || r, 'invite', r, c, 'points',
           'successful invite', p, 'granted', e, :at, :at
      FROM unnest(CAST(:ids AS bigint[]), CAST(:contacts AS uuid[]), CAST(:points AS bigint[]),
                  CAST(:entries AS bigint[])) AS u(r, c, p, e)
    ON CONFLICT DO NOTHING
    """
)


async def reward_due(
    session: AsyncSession,
    *,
    now: datetime,
    tenant_id: uuid.UUID | None = None,
    ids: list[int] | None = None,
    limit: int | None = None,
    part: int = 0,
    parts: int = 1,
) -> int:
    """Reward up to `limit` (BATCH) referrals whose hold has ended, the earliest due
    first (of one tenant, or these ids; of partition `part` of `parts` of the
    inviters), set-based: how many."""
    candidates = (
        await session.execute(
            _DUE,
            {
                "now": now,
                "tenant": tenant_id,
                "ids": ids,
                "limit": limit or BATCH,
                "part": part,
                "parts": parts,
            },
        )
    ).all()
    by_tenant: dict[uuid.UUID, list[Any]] = {}
    for row in candidates:
        by_tenant.setdefault(row.tenant_id, []).append(row)
    rewarded = 0
    for tenant, own in by_tenant.items():
        await lock_inviters(session, tenant, [r.inviter_id for r in own])
        rows = (
            await session.execute(
                _REWARD, {"now": now, "occurred": now.isoformat(), "ids": [r.id for r in own]}
            )
        ).all()
        if rows:
            await notify_relay(session)
            await _rewarded(session, tenant, rows, now)
        rewarded += len(rows)
    return rewarded


async def _rewarded(
    session: AsyncSession, tenant_id: uuid.UUID, rows: Sequence[Any], now: datetime
) -> None:
    rules = await load_rules(session, tenant_id)
    points = rules.rules.earning.invite.points
    earnings = [
        earning.Earning(
            r.inviter_id,
            rule="invite",
            base_points=points,
            occurred_at=now,
            source_key=f"referral:{r.id}:invite",
            reason="successful invite",
            details={"referral_id": r.id, "invitee_id": str(r.invitee_id)},
        )
        for r in rows
    ]
    booked = await earning.earn_many(session, tenant_id, earnings, rules) if points > 0 else []
    paid = [(r, b) for r, b in zip(rows, booked, strict=True) if b is not None]
    if paid:
        await session.execute(
            _INVITE_REWARDS,
            {
                "tenant": tenant_id,
                "ids": [r.id for r, _ in paid],
                "contacts": [r.inviter_id for r, _ in paid],
                "points": [b.points for _, b in paid],
                "entries": [b.entry_id for _, b in paid],
                "at": now,
            },
        )
    config = await load_config(session, tenant_id)
    if config.tiers:
        await pay_tiers(session, tenant_id, Counter(r.inviter_id for r in rows), config, now)


async def succeeded_counts(
    session: AsyncSession, tenant_id: uuid.UUID, inviter_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, int]:
    found = await session.execute(
        text(
            "SELECT inviter_id, count(*) AS n FROM referrals "
            "WHERE tenant_id = :t AND inviter_id = ANY(CAST(:ids AS uuid[])) "
            "AND status = 'rewarded' GROUP BY inviter_id"
        ),
        {"t": tenant_id, "ids": list(inviter_ids)},
    )
    return {row.inviter_id: row.n for row in found}


async def pay_tiers(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    new: Mapping[uuid.UUID, int],
    config: ReferralConfig,
    now: datetime,
    *,
    all_reached: bool = False,
) -> None:
    """The tiers these inviters' succeeded counts reach with their `new` successes
    (with `all_reached`, every tier their counts reach), each paid once, set-based (the
    caller holds the inviters' locks). A tier reached before was paid then (or clawed
    back since, and is not paid again)."""
    counts = await succeeded_counts(session, tenant_id, sorted(new))
    await rewards.grant_many(
        session,
        tenant_id,
        [
            rewards.Grant(
                key=f"tier:{inviter}:{tier.count}",
                purpose="tier",
                contact_id=inviter,
                reward=tier.reward,
                tier_count=tier.count,
            )
            for inviter in sorted(counts)
            for tier in config.tiers
            if tier.count <= counts[inviter]
            and (all_reached or counts[inviter] - new[inviter] < tier.count)
        ],
        now,
    )


# -- revocation ---------------------------------------------------------------------------


async def revoke(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    referral_ids: Sequence[int],
    *,
    cause: str,
    actor: str,
    at: datetime,
    within_hold: bool,
    details: dict[str, Any] | None = None,
) -> list[int]:
    """Revoke these referrals: with `within_hold`, only the pending ones and those whose
    hold has not ended at `at` (an invitee who leaves after the hold revokes nothing);
    otherwise (fraud) whatever their status. Their rewards are clawed back. The ids
    revoked."""
    if not referral_ids:
        return []
    to_lock = await session.scalars(
        select(Referral.inviter_id).where(
            Referral.tenant_id == tenant_id, one_of(Referral.id, referral_ids)
        )
    )
    await lock_inviters(session, tenant_id, [i for i in to_lock if i is not None])
    rows = (
        await session.execute(
            select(
                Referral.id,
                Referral.status,
                Referral.inviter_id,
                Referral.invitee_id,
                Referral.hold_until,
            )
            .where(
                Referral.tenant_id == tenant_id,
                one_of(Referral.id, referral_ids),
                Referral.status.in_(("pending", "qualified", "rewarded")),
            )
            .order_by(Referral.id)
            .with_for_update()
        )
    ).all()
    if within_hold:
        rows = [
            r
            for r in rows
            if r.status == "pending"
            or (r.status == "qualified" and r.hold_until is not None and at < r.hold_until)
        ]
    if not rows:
        return []
    ids = [r.id for r in rows]
    await session.execute(
        text(
            "UPDATE referrals SET status = 'revoked', reason = :cause, revoked_at = :at "
            "WHERE id = ANY(CAST(:ids AS bigint[]))"
        ),
        {"cause": cause, "at": at, "ids": ids},
    )
    await record_transitions(
        session,
        tenant_id,
        [(r.id, r.status) for r in rows],
        to="revoked",
        cause=cause,
        actor=actor,
        at=at,
        details=[details or {}] * len(rows),
    )
    paid = (
        await session.execute(
            select(ReferralReward.id, ReferralReward.referral_id).where(
                ReferralReward.tenant_id == tenant_id,
                one_of(ReferralReward.referral_id, ids),
                ReferralReward.status != "clawed_back",
            )
        )
    ).all()
    taken = await rewards.claw_back(
        session, tenant_id, [p.id for p in paid], reason=cause, at=at, actor=actor
    )
    referral_of = {p.id: p.referral_id for p in paid}
    by_referral: dict[int, list[dict[str, Any]]] = {}
    for t in taken:
        by_referral.setdefault(referral_of[t["reward_id"]], []).append(t)
    # Tier rewards the inviters no longer reach without the revoked successes.
    if any(r.status == "rewarded" for r in rows):
        inviters = sorted({r.inviter_id for r in rows if r.status == "rewarded"})
        counts = await succeeded_counts(session, tenant_id, inviters)
        for inviter in inviters:
            lost = (
                await session.scalars(
                    select(ReferralReward.id).where(
                        ReferralReward.tenant_id == tenant_id,
                        ReferralReward.purpose == "tier",
                        ReferralReward.contact_id == inviter,
                        ReferralReward.tier_count > counts.get(inviter, 0),
                        ReferralReward.status != "clawed_back",
                    )
                )
            ).all()
            await rewards.claw_back(
                session, tenant_id, list(lost), reason=cause, at=at, actor=actor
            )
    await publish_many(
        session,
        [
            (
                "referral.revoked",
                {
                    "referral_id": r.id,
                    "inviter_contact_id": str(r.inviter_id),
                    "invitee_contact_id": str(r.invitee_id),
                    "from_status": r.status,
                    "reason": cause,
                    "occurred_at": at.isoformat(),
                    "clawed_back": by_referral.get(r.id, []),
                },
                tenant_id,
            )
            for r in rows
        ],
    )
    return ids


async def open_referrals_of_invitees(
    session: AsyncSession, tenant_id: uuid.UUID, invitee_ids: Sequence[uuid.UUID]
) -> list[int]:
    found = await session.scalars(
        select(Referral.id).where(
            Referral.tenant_id == tenant_id,
            one_of(Referral.invitee_id, invitee_ids),
            Referral.status.in_(("pending", "qualified")),
        )
    )
    return list(found)
