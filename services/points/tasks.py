"""Event handlers and jobs of the points service (run by `scrm worker --service points`).

Each earning is keyed by its source (the event, or the rule's occurrence such
as one check-in per member and local day): the bus delivers an event to a
handler once, and the ledger's unique source key makes a second booking of
the same source impossible even so.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from services.points.ledger import expiry, merge, repository, service
from services.points.rules.service import load_rules
from services.users import contact_status
from shared.events import Event, subscribe
from shared.scheduler import ScheduledWork, recurring_job

log = logging.getLogger("scrm.points.tasks")
# Handlers defined beside their rules register when their module is imported.
HANDLER_MODULES = (merge,)


def _occurred(event: Event) -> datetime:
    raw = event.payload.get("occurred_at")
    return datetime.fromisoformat(raw) if isinstance(raw, str) else event.created_at


async def _member(session: AsyncSession, event: Event, key: str = "contact_id") -> uuid.UUID | None:
    """The live contact an event is about (its survivor when merged), or None."""
    raw = event.payload.get(key)
    if not raw or event.tenant_id is None:
        return None
    contact_id = uuid.UUID(str(raw))
    for _ in range(5):  # follow merges
        found = await contact_status(session, event.tenant_id, contact_id)
        if found.startswith("merged:"):
            contact_id = uuid.UUID(found.removeprefix("merged:"))
            continue
        return contact_id if found == "active" else None
    return None


def _properties(event: Event) -> dict[str, Any]:
    props = event.payload.get("properties")
    return props if isinstance(props, dict) else {}


@subscribe("points", "checkin", name="points.earn_checkin")
async def earn_checkin(session: AsyncSession, event: Event) -> None:
    """Check-in points, once per member and tenant-local day."""
    contact = await _member(session, event)
    if contact is None or event.tenant_id is None:
        return
    rules = await load_rules(session, event.tenant_id)
    at = _occurred(event)
    await service.earn_by_rule(
        session,
        event.tenant_id,
        contact,
        rule="checkin",
        base_points=rules.rules.earning.checkin.points,
        occurred_at=at,
        source_key=f"checkin:{contact}:{rules.local_day(at).isoformat()}",
        rules=rules,
        reason="daily check-in",
    )


@subscribe("points", "comment", name="points.earn_comment")
async def earn_comment(session: AsyncSession, event: Event) -> None:
    """Comment points, up to the daily cap."""
    contact = await _member(session, event)
    if contact is None or event.tenant_id is None:
        return
    rules = await load_rules(session, event.tenant_id)
    rule = rules.rules.earning.comment
    await service.earn_by_rule(
        session,
        event.tenant_id,
        contact,
        rule="comment",
        base_points=rule.points,
        occurred_at=_occurred(event),
        source_key=f"event:{event.event_id}",
        rules=rules,
        reason="comment",
        daily_cap=rule.daily_cap,
    )


@subscribe("points", "order.paid", name="points.earn_order")
async def earn_order(session: AsyncSession, event: Event) -> None:
    """1 point per whole ¥1 paid (amounts are fen), times any multiplier."""
    contact = await _member(session, event)
    props = _properties(event)
    order_id, amount = props.get("order_id"), props.get("amount_fen")
    if contact is None or event.tenant_id is None or not order_id or not isinstance(amount, int):
        return
    rules = await load_rules(session, event.tenant_id)
    per_yuan = rules.rules.earning.order_paid.points_per_yuan
    booked = await service.earn_by_rule(
        session,
        event.tenant_id,
        contact,
        rule="order_paid",
        base_points=amount // 100 * per_yuan,
        occurred_at=_occurred(event),
        source_key=f"order:{order_id}",
        rules=rules,
        reason=f"order {order_id}",
        order_id=str(order_id),
        details={"amount_fen": amount},
    )
    if booked is not None and not booked.replayed:
        # A refund that arrived before its payment is applied now.
        account = await repository.lock_account(session, event.tenant_id, contact)
        await service.reconcile_order(
            session, account, str(order_id), source_key=f"clawback:paid:{order_id}"
        )


@subscribe("points", "order.refunded", name="points.claw_back_refund")
async def claw_back_refund(session: AsyncSession, event: Event) -> None:
    """A refund takes back the order's points in proportion (partial refunds too)."""
    contact = await _member(session, event)
    props = _properties(event)
    order_id, refund = props.get("order_id"), props.get("refund_fen")
    if contact is None or event.tenant_id is None or not order_id or not isinstance(refund, int):
        return
    await service.record_refund(
        session,
        event.tenant_id,
        contact,
        order_id=str(order_id),
        refund_fen=refund,
        source_key=f"event:{event.event_id}",
    )


@subscribe("points", "referral.succeeded", name="points.earn_invite")
async def earn_invite(session: AsyncSession, event: Event) -> None:
    """Points to the inviter of a successful referral."""
    contact = await _member(session, event, "inviter_contact_id")
    if contact is None or event.tenant_id is None:
        return
    rules = await load_rules(session, event.tenant_id)
    await service.earn_by_rule(
        session,
        event.tenant_id,
        contact,
        rule="invite",
        base_points=rules.rules.earning.invite.points,
        occurred_at=_occurred(event),
        source_key=f"event:{event.event_id}",
        rules=rules,
        reason="successful invite",
    )


@recurring_job("points", "expire_points", every_seconds=3600)
async def expire_points(session: AsyncSession, work: ScheduledWork) -> None:
    """Expire due lots and warn of coming expiries (set-based, every tenant)."""
    expired = await expiry.expire_due(session)
    warned = await expiry.warn_expiring(session)
    log.info("points expiry run", extra={"expired_lots": expired, "notices": warned})


@recurring_job("points", "review_tiers", every_seconds=3600)
async def review_tiers(session: AsyncSession, work: ScheduledWork) -> None:
    """At the start of each review period (tenant-local), the retention review, once."""
    from services.points.ledger.booking import now
    from services.points.tiers import service as tiers

    for tenant_id in await repository.tenant_ids(session):
        rules = await load_rules(session, tenant_id)
        dropped = await tiers.review(session, tenant_id, rules, now())
        if dropped:
            log.info("tier review", extra={"tenant_id": str(tenant_id), "downgraded": dropped})


@recurring_job("points", "check_points_health", every_seconds=3600)
async def check_points_health(session: AsyncSession, work: ScheduledWork) -> None:
    """Last week's spent/earned per tenant: record and post an alert when too low."""
    import httpx

    from services.points.health import service as health
    from services.points.ledger.booking import now

    async with httpx.AsyncClient() as client:
        for tenant_id in await repository.tenant_ids(session):
            await health.check_last_week(session, tenant_id, now())
            await health.deliver_pending(session, tenant_id, client)


@subscribe("points", "order.paid", name="points.spend_held_points")
async def spend_held_points(session: AsyncSession, event: Event) -> None:
    """A paid order spends the points held for it by a points + cash redemption."""
    from services.points.catalog import holds

    order_id = _properties(event).get("order_id")
    if event.tenant_id is None or not order_id:
        return
    await holds.spend_hold(session, event.tenant_id, str(order_id))


@recurring_job("points", "release_expired_holds", every_seconds=60)
async def release_expired_holds(session: AsyncSession, work: ScheduledWork) -> None:
    """Give back the points of points + cash holds whose order was not paid in time."""
    from services.points.catalog import holds

    released = await holds.release_expired_holds(session)
    if released:
        log.info("points holds released", extra={"released": released})
