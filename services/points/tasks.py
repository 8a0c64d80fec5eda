"""Event handlers and jobs of the points service (run by `scrm worker --service points`).

Each earning is keyed by its source (the event, or the rule's occurrence such
as one check-in per member and local day): the bus delivers an event to a
handler once, and the ledger's unique source key makes a second booking of
the same source impossible even so.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.points.ledger import earning, expiry, merge, repository, service
from services.points.ledger.booking import Booked
from services.points.referrals import reports_tasks as referral_report_tasks
from services.points.referrals import tasks as referral_tasks
from services.points.rules.service import TenantRules, load_rules
from services.users import contact_statuses
from shared.events import Event, subscribe, subscribe_many
from shared.scheduler import ScheduledWork, recurring_job
from shared.statistics import keep_statistics_fresh

log = logging.getLogger("scrm.points.tasks")
# Handlers defined beside their rules register when their module is imported.
HANDLER_MODULES = (merge, referral_tasks, referral_report_tasks)


def _occurred(event: Event) -> datetime:
    raw = event.payload.get("occurred_at")
    return datetime.fromisoformat(raw) if isinstance(raw, str) else event.created_at


async def _by_member(
    session: AsyncSession, events: list[Event], key: str = "contact_id"
) -> list[tuple[Event, uuid.UUID, uuid.UUID]]:
    """(event, tenant, live contact it is about: its survivor when merged) for the events
    about a live contact, in contact order (each contact's events in their own order), so
    concurrent batches lock accounts in one order. One statement per tenant and merge step.
    """
    wanted: dict[int, tuple[uuid.UUID, uuid.UUID]] = {}
    for event in events:
        raw = event.payload.get(key)
        if raw and event.tenant_id is not None:
            wanted[event.id] = (event.tenant_id, uuid.UUID(str(raw)))
    live: dict[int, tuple[uuid.UUID, uuid.UUID]] = {}
    for _ in range(5):  # follow merges
        if not wanted:
            break
        by_tenant: dict[uuid.UUID, set[uuid.UUID]] = {}
        for tenant_id, contact_id in wanted.values():
            by_tenant.setdefault(tenant_id, set()).add(contact_id)
        status = {
            (tenant_id, contact_id): found
            for tenant_id, ids in by_tenant.items()
            for contact_id, found in (await contact_statuses(session, tenant_id, ids)).items()
        }
        merged: dict[int, tuple[uuid.UUID, uuid.UUID]] = {}
        for event_id, (tenant_id, contact_id) in wanted.items():
            found = status[(tenant_id, contact_id)]
            if found == "active":
                live[event_id] = (tenant_id, contact_id)
            elif found.startswith("merged:"):
                merged[event_id] = (tenant_id, uuid.UUID(found.removeprefix("merged:")))
        wanted = merged
    found_events = [(event, *live[event.id]) for event in events if event.id in live]
    return sorted(found_events, key=lambda item: (item[1], item[2]))


async def _member(session: AsyncSession, event: Event, key: str = "contact_id") -> uuid.UUID | None:
    """The live contact an event is about (its survivor when merged), or None."""
    found = await _by_member(session, [event], key)
    return found[0][2] if found else None


async def _rules_of(
    session: AsyncSession, tenant_ids: Iterable[uuid.UUID]
) -> dict[uuid.UUID, TenantRules]:
    """Each tenant's rules, loaded once per batch."""
    return {tenant_id: await load_rules(session, tenant_id) for tenant_id in set(tenant_ids)}


def _properties(event: Event) -> dict[str, Any]:
    props = event.payload.get("properties")
    return props if isinstance(props, dict) else {}


def _by_tenant(
    items: list[tuple[uuid.UUID, earning.Earning]],
) -> dict[uuid.UUID, list[tuple[int, earning.Earning]]]:
    """(position in `items`, earning) of each tenant, in the items' order."""
    found: dict[uuid.UUID, list[tuple[int, earning.Earning]]] = {}
    for i, (tenant_id, item) in enumerate(items):
        found.setdefault(tenant_id, []).append((i, item))
    return found


async def _earn(
    session: AsyncSession,
    items: list[tuple[uuid.UUID, earning.Earning]],
    rules_of: dict[uuid.UUID, TenantRules],
) -> list[Booked | None]:
    """Book (tenant, earning) items, a few statements per tenant: what each booked."""
    booked: list[Booked | None] = [None] * len(items)
    for tenant_id, own in _by_tenant(items).items():
        found = await earning.earn_many(
            session, tenant_id, [item for _, item in own], rules_of[tenant_id]
        )
        for (i, _), result in zip(own, found, strict=True):
            booked[i] = result
    return booked


@subscribe_many("points", "checkin", name="points.earn_checkin")
async def earn_checkin(session: AsyncSession, events: list[Event]) -> None:
    """Check-in points, once per member and tenant-local day."""
    members = await _by_member(session, events)
    rules_of = await _rules_of(session, (tenant_id for _, tenant_id, _ in members))
    items: list[tuple[uuid.UUID, earning.Earning]] = []
    for event, tenant_id, contact in members:
        rules = rules_of[tenant_id]
        at = _occurred(event)
        items.append(
            (
                tenant_id,
                earning.Earning(
                    contact,
                    rule="checkin",
                    base_points=rules.rules.earning.checkin.points,
                    occurred_at=at,
                    source_key=f"checkin:{contact}:{rules.local_day(at).isoformat()}",
                    reason="daily check-in",
                ),
            )
        )
    await _earn(session, items, rules_of)


@subscribe_many("points", "comment", name="points.earn_comment")
async def earn_comment(session: AsyncSession, events: list[Event]) -> None:
    """Comment points, up to the daily cap."""
    members = await _by_member(session, events)
    rules_of = await _rules_of(session, (tenant_id for _, tenant_id, _ in members))
    items: list[tuple[uuid.UUID, earning.Earning]] = []
    for event, tenant_id, contact in members:
        rule = rules_of[tenant_id].rules.earning.comment
        items.append(
            (
                tenant_id,
                earning.Earning(
                    contact,
                    rule="comment",
                    base_points=rule.points,
                    occurred_at=_occurred(event),
                    source_key=f"event:{event.event_id}",
                    reason="comment",
                    daily_cap=rule.daily_cap,
                ),
            )
        )
    await _earn(session, items, rules_of)


@subscribe_many("points", "order.paid", name="points.earn_order")
async def earn_order(session: AsyncSession, events: list[Event]) -> None:
    """1 point per whole ¥1 paid (amounts are fen), times any multiplier."""
    members = await _by_member(session, events)
    rules_of = await _rules_of(session, (tenant_id for _, tenant_id, _ in members))
    items: list[tuple[uuid.UUID, earning.Earning]] = []
    for event, tenant_id, contact in members:
        props = _properties(event)
        order_id, amount = props.get("order_id"), props.get("amount_fen")
        if not order_id or not isinstance(amount, int):
            continue
        per_yuan = rules_of[tenant_id].rules.earning.order_paid.points_per_yuan
        items.append(
            (
                tenant_id,
                earning.Earning(
                    contact,
                    rule="order_paid",
                    base_points=amount // 100 * per_yuan,
                    occurred_at=_occurred(event),
                    source_key=f"order:{order_id}",
                    reason=f"order {order_id}",
                    order_id=str(order_id),
                    details={"amount_fen": amount},
                ),
            )
        )
    paid: dict[uuid.UUID, dict[str, uuid.UUID]] = {}
    for (tenant_id, item), booked in zip(items, await _earn(session, items, rules_of), strict=True):
        if booked is not None and not booked.replayed:
            assert item.order_id is not None
            paid.setdefault(tenant_id, {})[item.order_id] = item.contact_id
    for tenant_id, orders in paid.items():
        await service.apply_refunds_before_payment(session, tenant_id, orders)


@subscribe_many("points", "order.refunded", name="points.claw_back_refund")
async def claw_back_refund(session: AsyncSession, events: list[Event]) -> None:
    """A refund takes back the order's points in proportion (partial refunds too)."""
    members = await _by_member(session, events)
    for event, tenant_id, contact in members:
        props = _properties(event)
        order_id, refund = props.get("order_id"), props.get("refund_fen")
        if not order_id or not isinstance(refund, int):
            continue
        await service.record_refund(
            session,
            tenant_id,
            contact,
            order_id=str(order_id),
            refund_fen=refund,
            source_key=f"event:{event.event_id}",
        )


@subscribe("points", "referral.succeeded", name="points.earn_invite")
async def earn_invite(session: AsyncSession, event: Event) -> None:
    """Points to the inviter of a successful referral, once per referral.

    The referrals part's hold expiry job books them with the referral's success
    (set-based) under the key `referral:<id>:invite`, the key this handler books
    under too: its delivery of that event finds them booked and books nothing. A
    `referral.succeeded` without a referral_id (an integration's) is keyed by its event.
    A referral revoked meanwhile earns nothing.
    """
    contact = await _member(session, event, "inviter_contact_id")
    if contact is None or event.tenant_id is None:
        return
    referral_id = event.payload.get("referral_id")
    source_key = f"event:{event.event_id}"
    if isinstance(referral_id, int):
        from services.points.referrals.models import Referral

        status = await session.scalar(
            select(Referral.status)
            .where(Referral.tenant_id == event.tenant_id, Referral.id == referral_id)
            .with_for_update()
        )
        if status != "rewarded":
            return
        source_key = f"referral:{referral_id}:invite"
    rules = await load_rules(session, event.tenant_id)
    await service.earn_by_rule(
        session,
        event.tenant_id,
        contact,
        rule="invite",
        base_points=rules.rules.earning.invite.points,
        occurred_at=_occurred(event),
        source_key=source_key,
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


@subscribe_many("points", "order.paid", name="points.spend_held_points")
async def spend_held_points(session: AsyncSession, events: list[Event]) -> None:
    """A paid order spends the points held for it by a points + cash redemption."""
    from services.points.catalog import holds

    orders: dict[uuid.UUID, list[str]] = {}
    for event in events:
        order_id = _properties(event).get("order_id")
        if event.tenant_id is not None and order_id:
            orders.setdefault(event.tenant_id, []).append(str(order_id))
    for tenant_id, order_ids in orders.items():
        await holds.spend_holds(session, tenant_id, order_ids)


@recurring_job("points", "release_expired_holds", every_seconds=60)
async def release_expired_holds(session: AsyncSession, work: ScheduledWork) -> None:
    """Give back the points of points + cash holds whose order was not paid in time."""
    from services.points.catalog import holds

    released = await holds.release_expired_holds(session)
    if released:
        log.info("points holds released", extra={"released": released})


# Every new member opens an account and lots: earnings are planned from fresh statistics.
keep_statistics_fresh(
    "points", "points_accounts", "points_ledger", "points_lots", "points_tier_changes"
)


@subscribe_many("points", "campaign.points_awarded", name="points.earn_campaign_award")
async def earn_campaign_award(session: AsyncSession, events: list[Event]) -> None:
    """A journey's award_points step: its points, booked once per step run (`key`)."""
    members = await _by_member(session, events)
    rules_of = await _rules_of(session, (tenant_id for _, tenant_id, _ in members))
    items: list[tuple[uuid.UUID, earning.Earning]] = []
    for event, tenant_id, contact in members:
        points, key = event.payload.get("points"), event.payload.get("key")
        if not isinstance(points, int) or points < 1 or not isinstance(key, str):
            continue
        items.append(
            (
                tenant_id,
                earning.Earning(
                    contact,
                    rule="campaign",
                    base_points=points,
                    occurred_at=event.created_at,
                    source_key=f"campaign:{key}",
                    reason=str(event.payload.get("reason") or "campaign")[:100],
                    details={"campaign_id": event.payload.get("campaign_id")},
                ),
            )
        )
    await _earn(session, items, rules_of)
