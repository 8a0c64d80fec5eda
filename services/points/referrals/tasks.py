"""Event handlers and jobs of the referrals part.

- attribution: `contact.added` through an inviter's channel code, and
  `referral.registered` (an integration's event);
- qualification: `order.paid` of an invitee with a pending referral;
- revocation within the hold: `contact.lost` after `del_follow_user`, a full refund
  of the qualifying order (`order.refunded`);
- merges: the referrals of a merged contact follow the survivor (once);
- the hold expiry job (`reward_referrals`, every minute): rewards due referrals
  set-based and grants owed rewards that can be now.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from services.points.ledger.booking import now as clock_now
from services.points.referrals import attribution, channel_codes, lifecycle, rewards
from services.points.referrals.config import load_config
from services.points.referrals.models import Referral
from shared.events import Event, subscribe, subscribe_many
from shared.scheduler import ScheduledWork, recurring_job, schedule
from shared.statistics import keep_statistics_fresh

log = logging.getLogger("scrm.points.referrals")


def _occurred(event: Event) -> datetime:
    raw = event.payload.get("occurred_at")
    return datetime.fromisoformat(raw) if isinstance(raw, str) else event.created_at


def _properties(event: Event) -> dict[str, Any]:
    props = event.payload.get("properties")
    return props if isinstance(props, dict) else {}


def _contact(event: Event, key: str = "contact_id") -> uuid.UUID | None:
    try:
        return uuid.UUID(str(event.payload[key]))
    except (KeyError, ValueError):
        return None


@subscribe_many(
    "points",
    "contact.added",
    name="points.attribute_channel_code",
    # Only adds through an inviter's channel code (State `ref-<code>`) are delivered.
    interest="o.payload->>'state' LIKE 'ref-%'",
)
async def attribute_channel_code(session: AsyncSession, events: list[Event]) -> None:
    """A customer added staff through an inviter's WeCom channel code."""
    requests: dict[uuid.UUID, list[attribution.Request]] = {}
    for event in events:
        code = attribution.code_of_state(event.payload.get("state"))
        invitee = _contact(event)
        if code is None or event.tenant_id is None or invitee is None:
            continue
        requests.setdefault(event.tenant_id, []).append(
            attribution.Request(
                invitee, code, source="wecom", event_key=f"event:{event.id}", at=_occurred(event)
            )
        )
    for tenant_id, asked in requests.items():
        await attribution.attribute_many(session, tenant_id, asked)


@subscribe_many("points", "referral.registered", name="points.attribute_registration")
async def attribute_registration(session: AsyncSession, events: list[Event]) -> None:
    """An integration's `referral.registered`: the invitee came with an inviter's code
    (its device id and IP hashed at ingest)."""
    requests: dict[uuid.UUID, list[attribution.Request]] = {}
    for event in events:
        props = _properties(event)
        code, invitee = props.get("code"), _contact(event)
        if not isinstance(code, str) or event.tenant_id is None or invitee is None:
            continue
        device, ip = props.get("device_hash"), props.get("ip_hash")
        requests.setdefault(event.tenant_id, []).append(
            attribution.Request(
                invitee,
                code.strip().upper(),
                source="event",
                event_key=f"event:{event.id}",
                at=_occurred(event),
                device_hash=device if isinstance(device, str) else None,
                ip_hash=ip if isinstance(ip, str) else None,
            )
        )
    for tenant_id, asked in requests.items():
        await attribution.attribute_many(session, tenant_id, asked)


async def _live(
    session: AsyncSession, events: list[Event]
) -> list[tuple[Event, uuid.UUID, uuid.UUID]]:
    from services.points.tasks import _by_member  # the points service's member resolution

    return await _by_member(session, events)


@subscribe_many("points", "order.paid", name="points.qualify_referrals")
async def qualify_referrals(session: AsyncSession, events: list[Event]) -> None:
    """An invitee's first paid order qualifies their referral (the hold starts)."""
    orders: dict[uuid.UUID, list[lifecycle.PaidOrder]] = {}
    for event, tenant_id, contact in await _live(session, events):
        props = _properties(event)
        order_id, amount = props.get("order_id"), props.get("amount_fen")
        if not order_id or not isinstance(amount, int):
            continue
        orders.setdefault(tenant_id, []).append(
            lifecycle.PaidOrder(
                contact, str(order_id), amount, _occurred(event), str(event.event_id)
            )
        )
    for tenant_id, paid in orders.items():
        await lifecycle.qualify(session, tenant_id, paid, now=clock_now())


@subscribe_many("points", "order.refunded", name="points.revoke_refunded_referrals")
async def revoke_refunded(session: AsyncSession, events: list[Event]) -> None:
    """A refund of the qualifying order in full, within the hold, revokes the referral."""
    for event, tenant_id, contact in await _live(session, events):
        props = _properties(event)
        order_id, refund = props.get("order_id"), props.get("refund_fen")
        if not order_id or not isinstance(refund, int) or refund <= 0:
            continue
        row = (
            await session.execute(
                text(
                    "UPDATE referrals SET refunded_fen = refunded_fen + :refund "
                    "WHERE tenant_id = :t AND invitee_id = :c AND order_id = :o "
                    "AND status IN ('qualified', 'rewarded') "
                    "RETURNING id, refunded_fen, order_amount_fen"
                ),
                {"refund": refund, "t": tenant_id, "c": contact, "o": str(order_id)},
            )
        ).first()
        if row is not None and row.refunded_fen >= (row.order_amount_fen or 0):
            await lifecycle.revoke(
                session,
                tenant_id,
                [row.id],
                cause="refunded",
                actor="event",
                at=_occurred(event),
                within_hold=True,
                details={"order_id": str(order_id), "event_id": str(event.event_id)},
            )


@subscribe_many(
    "points",
    "contact.lost",
    name="points.revoke_lost_referrals",
    interest="o.payload->>'reason' = 'deleted_by_contact'",
)
async def revoke_lost(session: AsyncSession, events: list[Event]) -> None:
    """An invitee who deletes the staff member within the hold revokes the referral."""
    for event, tenant_id, contact in await _live(session, events):
        if event.payload.get("reason") != "deleted_by_contact":
            continue
        ids = await lifecycle.open_referrals_of_invitees(session, tenant_id, [contact])
        await lifecycle.revoke(
            session,
            tenant_id,
            ids,
            cause="deleted_staff",
            actor="event",
            at=_occurred(event),
            within_hold=True,
            details={
                "staff_userid": event.payload.get("staff_userid"),
                "event_id": str(event.event_id),
            },
        )


@subscribe("points", "contact.merged", name="points.merge_referrals")
async def merge_referrals(session: AsyncSession, event: Event) -> None:
    """The merged contact's referrals follow the survivor, counted once."""
    survivor, merged = _contact(event, "survivor_id"), _contact(event, "merged_id")
    if event.tenant_id is None or survivor is None or merged is None:
        return
    await follow_merge(session, event.tenant_id, survivor, merged, at=event.created_at)


async def follow_merge(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    survivor: uuid.UUID,
    merged: uuid.UUID,
    *,
    at: datetime,
) -> None:
    # Both as inviters first: the one lock order (lifecycle.py).
    await lifecycle.lock_inviters(session, tenant_id, [survivor, merged])
    # As invitee: one person is attributed once. The earlier referral stands; a later
    # one of the other contact is revoked (and its rewards clawed back).
    mine = (
        await session.execute(
            select(Referral.id, Referral.invitee_id, Referral.attributed_at)
            .where(
                Referral.tenant_id == tenant_id,
                Referral.invitee_id.in_((survivor, merged)),
                Referral.status != "refused",
            )
            .order_by(Referral.attributed_at, Referral.id)
        )
    ).all()
    for later in mine[1:]:
        await lifecycle.revoke(
            session,
            tenant_id,
            [later.id],
            cause="merged",
            actor="event",
            at=at,
            within_hold=False,
            details={"survivor_id": str(survivor), "merged_id": str(merged)},
        )
    if mine and mine[0].invitee_id == merged:
        await session.execute(
            text("UPDATE referrals SET invitee_id = :s WHERE id = :id"),
            {"s": survivor, "id": mine[0].id},
        )
    # As inviter (and second-level inviter): the survivor's, from now on.
    await session.execute(
        text("UPDATE referrals SET inviter_id = :s WHERE tenant_id = :t AND inviter_id = :m"),
        {"s": survivor, "t": tenant_id, "m": merged},
    )
    await session.execute(
        text(
            "UPDATE referrals SET level2_inviter_id = :s "
            "WHERE tenant_id = :t AND level2_inviter_id = :m"
        ),
        {"s": survivor, "t": tenant_id, "m": merged},
    )
    # The survivor invited itself through the merged contact: no acquisition.
    own = list(
        await session.scalars(
            select(Referral.id).where(
                Referral.tenant_id == tenant_id,
                Referral.inviter_id == survivor,
                Referral.invitee_id == survivor,
                Referral.status.in_(("pending", "qualified", "rewarded")),
            )
        )
    )
    await lifecycle.revoke(
        session, tenant_id, own, cause="self_invite", actor="event", at=at, within_hold=False
    )
    # Open reviews, and rewards (so clawbacks reach the account the points went to).
    await session.execute(
        text(
            "UPDATE referral_reviews SET inviter_id = :s WHERE tenant_id = :t "
            "AND inviter_id = :m AND (status <> 'open' OR NOT EXISTS ("
            " SELECT 1 FROM referral_reviews o WHERE o.tenant_id = :t AND o.inviter_id = :s"
            " AND o.status = 'open'))"
        ),
        {"s": survivor, "t": tenant_id, "m": merged},
    )
    await session.execute(
        text(
            "UPDATE referral_rewards SET contact_id = :s WHERE tenant_id = :t AND contact_id = :m"
        ),
        {"s": survivor, "t": tenant_id, "m": merged},
    )
    # A tier is paid once per person: the merged contact's tier rewards become the
    # survivor's, and one both were paid is clawed back from the merged side.
    tiers = (
        await session.execute(
            text(
                "SELECT id, tier_count, reward_key FROM referral_rewards "
                "WHERE tenant_id = :t AND purpose = 'tier' AND reward_key LIKE :prefix "
                "AND status <> 'clawed_back'"
            ),
            {"t": tenant_id, "prefix": f"tier:{merged}:%"},
        )
    ).all()
    for tier in tiers:
        moved = await session.scalar(
            text(
                "UPDATE referral_rewards SET reward_key = :k WHERE id = :id AND NOT EXISTS ("
                " SELECT 1 FROM referral_rewards WHERE tenant_id = :t AND reward_key = :k)"
                " RETURNING id"
            ),
            {"k": f"tier:{survivor}:{tier.tier_count}", "id": tier.id, "t": tenant_id},
        )
        if moved is None:
            await rewards.claw_back(
                session, tenant_id, [tier.id], reason="merged", at=at, actor="event"
            )
    # Tiers the survivor reaches with both contacts' successes together.
    config = await load_config(session, tenant_id)
    if config.tiers:
        await lifecycle.pay_tiers(session, tenant_id, {survivor: 0}, config, at, all_reached=True)


# A backlog is worked by this many runs at once, each on its own partition of the
# inviters (so they never wait on each other's locks).
REWARD_PARTS = 2


@recurring_job("points", "reward_referrals", every_seconds=60)
async def reward_referrals(session: AsyncSession, work: ScheduledWork) -> None:
    """The hold expiry job: referrals whose hold ended are rewarded, set-based, a batch
    a run. After a full batch the backlog is worked at once by REWARD_PARTS runs, each
    a transaction of its own on a partition of the inviters, each followed by the next
    of its partition while its batches come full (so a backlog never holds the
    inviters' locks for long, and the workers' concurrency works it in parallel)."""
    now = clock_now()
    part, parts = int(work.args.get("part", 0)), int(work.args.get("parts", 1))
    rewarded = await lifecycle.reward_due(session, now=now, part=part, parts=parts)
    paid = await rewards.pay_owed(session, now)
    if rewarded or paid:
        log.info("referrals rewarded", extra={"rewarded": rewarded, "owed_paid": paid})
    if rewarded < lifecycle.BATCH:
        return
    follow = [(part, parts)] if parts > 1 else [(p, REWARD_PARTS) for p in range(REWARD_PARTS)]
    for next_part, of in follow:
        await schedule(
            session,
            service="points",
            job="reward_referrals",
            due_at=datetime.now(UTC),
            args={"part": next_part, "parts": of},
            dedupe_key=f"reward_referrals:after:{work.id}:{next_part}",
        )


# A campaign brings invitees by the thousand in minutes: attribution and the hold job
# are planned from fresh statistics.
keep_statistics_fresh(
    "points",
    "referrals",
    "referral_transitions",
    "referral_rewards",
    "referral_contacts",
    "referral_activity",
)

__all__ = ["channel_codes"]  # its job registers when this module is imported
