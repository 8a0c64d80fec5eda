"""The step machine: a batch of a campaign's due enrolments taken through their steps.

Each enrolment runs from its current step until it waits (`wait`, `wait_for`, a send
held back by quiet hours or a postponed quota) or ends (`exit`, a step without
`next`, a holdout). The batch goes round by round: in each round the enrolments at
the same step are handled together (one rule evaluation per `condition`, one
governor pass per `send`), so a batch of 500 contacts costs a few statements per
step, never a statement per contact. Everything a batch decides (where each
enrolment is, the sends it planned, the tasks, the actions' events) is written in
the caller's transaction: a worker killed midway leaves the enrolments as they were,
and the next run plans the same sends under the same keys (`<enrolment>:<step>:<seq>`).
"""

from __future__ import annotations

import hashlib
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services import tagging, users
from services.campaigns.enrolment.service import goal_events
from services.campaigns.governor import planner
from services.campaigns.journeys.definition import CHANNELS
from services.campaigns.sends.dispatch import notify as notify_sends
from shared.events import publish_many
from shared.tenancy import tenant_timezone

# Rounds a batch goes through at most: a journey of MAX_STEPS steps without a wait
# ends in fewer; a contact still moving after them is due again at once.
MAX_ROUNDS = 64


@dataclass
class Enrolment:
    id: int
    tenant_id: uuid.UUID
    campaign_id: int
    version: int
    contact_id: uuid.UUID
    status: str
    step_id: str
    due_at: datetime
    seq: int
    variant: str | None
    context: dict[str, Any]
    entered_at: datetime
    # Set as the batch goes:
    moved: bool = False
    ended: str | None = None  # done, exited, converted
    end_reason: str | None = None
    listens: list[str] = field(default_factory=list)
    step_since: datetime | None = None

    # A send that is no journey step's (a points notice) names its own key.
    send_key: str | None = None

    @property
    def key(self) -> str:
        return self.send_key or f"{self.id}:{self.step_id}:{self.seq}"


@dataclass
class Plan:
    """What a batch writes besides the enrolments."""

    sends: list[dict[str, Any]] = field(default_factory=list)
    reviews: list[tuple[str, list[str]]] = field(default_factory=list)  # (send key, words)
    tasks: list[dict[str, Any]] = field(default_factory=list)
    # The actions' events (campaign.tag_requested, campaign.points_awarded) with tenants.
    tag_requests: list[tuple[dict[str, Any], uuid.UUID]] = field(default_factory=list)
    awards: list[tuple[dict[str, Any], uuid.UUID]] = field(default_factory=list)


async def run(
    session: AsyncSession,
    campaign_id: int,
    definitions: dict[int, dict[str, Any]],
    enrolments: list[Enrolment],
    now: datetime,
) -> Plan:
    """Take the (locked) enrolments of one campaign through their steps and write it."""
    if not enrolments:
        return Plan()
    tenant_id = enrolments[0].tenant_id
    tz = ZoneInfo(await tenant_timezone(session, tenant_id))
    governor = await planner.Governor.load(session, tenant_id, now, tz)
    plan = Plan()
    statuses = await users.contact_statuses(session, tenant_id, {e.contact_id for e in enrolments})
    moving: list[Enrolment] = []
    for e in enrolments:
        status = statuses.get(e.contact_id, "missing")
        if status != "active":
            _end(e, "exited", "erased" if status in ("erased", "missing") else "merged", now)
        else:
            moving.append(e)
    for _ in range(MAX_ROUNDS):
        if not moving:
            break
        groups: dict[tuple[int, str, str], list[Enrolment]] = defaultdict(list)
        for e in moving:
            groups[(e.version, e.step_id, e.status)].append(e)
        still: list[Enrolment] = []
        for (version, step_id, status), group in groups.items():
            definition = definitions[version]
            step = _step(definition, step_id)
            if step is None:  # a version without the step cannot happen; end cleanly
                for e in group:
                    _end(e, "exited", "unknown_step", now)
                continue
            advanced = await _advance(
                session, definition, step, status, group, plan, governor, now, tz
            )
            still.extend(advanced)
        moving = still
    for e in moving:  # still moving after MAX_ROUNDS: due again at once
        e.due_at = now
    await _write(session, enrolments, definitions, plan, now)
    return plan


def _step(definition: dict[str, Any], step_id: str) -> dict[str, Any] | None:
    for step in definition["steps"]:
        if step["id"] == step_id:
            return dict(step)
    return None


def _go(e: Enrolment, target: str | None, now: datetime) -> bool:
    """Move on to `target` (None: the journey is done); whether it is still moving."""
    e.moved = True
    e.seq += 1
    e.step_since = now
    if target is None:
        _end(e, "done", "completed", now)
        return False
    e.step_id = target
    e.status = "active"
    e.due_at = now
    return True


def _end(e: Enrolment, status: str, reason: str, now: datetime) -> None:
    e.moved = True
    e.ended = status
    e.status = status
    e.end_reason = reason
    e.due_at = now


def _park(e: Enrolment, status: str, until: datetime, now: datetime, *, new_step: bool) -> None:
    e.moved = True
    e.status = status
    e.due_at = until
    if new_step:
        e.step_since = now


async def _advance(
    session: AsyncSession,
    definition: dict[str, Any],
    step: dict[str, Any],
    status: str,
    group: list[Enrolment],
    plan: Plan,
    governor: planner.Governor,
    now: datetime,
    tz: ZoneInfo,
) -> list[Enrolment]:
    """Run one step for a group of enrolments at it; those still moving."""
    kind = step["type"]
    moving: list[Enrolment] = []
    if status == "waiting":
        # The wait is over (or the wait_for timed out).
        target = step.get("next") if kind == "wait" else step.get("on_timeout")
        return [e for e in group if _go(e, target, now)]
    if kind == "wait":
        until = wait_until(step, now, tz)
        for e in group:
            _park(e, "waiting", until, now, new_step=True)
        return []
    if kind == "wait_for":
        until = now + _duration(step["timeout"])
        for e in group:
            _park(e, "waiting", until, now, new_step=True)
        return []
    if kind == "exit":
        for e in group:
            _end(e, "exited", "exit_step", now)
        return []
    if kind == "condition":
        holds = await tagging.rule_holds_for(
            session, group[0].tenant_id, step["rule"], [e.contact_id for e in group], now
        )
        return [e for e in group if _go(e, step["yes" if e.contact_id in holds else "no"], now)]
    if kind == "split":
        for e in group:
            variant = pick_variant(step, e.id)
            if variant is None:
                _end(e, "exited", "holdout", now)
                e.variant = "holdout"
                continue
            e.variant = variant["name"]
            if _go(e, variant["next"], now):
                moving.append(e)
        return moving
    # An action.
    action = step["action"]
    if action == "send":
        outcomes = await governor.plan_sends(session, definition, step, group, plan)
        for e in group:
            outcome = outcomes[e.id]
            if outcome.defer_until is not None:
                # The step runs again when the window ends (same key, same send row).
                _park(e, "active", outcome.defer_until, now, new_step=False)
            elif outcome.exit_reason is not None:
                _end(e, "exited", outcome.exit_reason, now)
            elif _go(e, step.get("next"), now):
                moving.append(e)
        return moving
    if action in ("add_tag", "remove_tag"):
        for e in group:
            payload = {
                "contact_id": str(e.contact_id),
                "tag_id": step["tag_id"],
                "action": "add" if action == "add_tag" else "remove",
                "weight": step.get("weight"),
                "campaign_id": e.campaign_id,
                "step_id": e.step_id,
                "key": e.key,
            }
            plan.tag_requests.append((payload, e.tenant_id))
    elif action == "award_points":
        for e in group:
            payload = {
                "contact_id": str(e.contact_id),
                "points": step["points"],
                "reason": step["reason"],
                "campaign_id": e.campaign_id,
                "step_id": e.step_id,
                "key": e.key,
            }
            plan.awards.append((payload, e.tenant_id))
    elif action == "create_task":
        await governor.plan_tasks(session, step, group, plan)
    elif action == "call_webhook":
        await governor.plan_webhooks(session, step, group, plan)
    return [e for e in group if _go(e, step.get("next"), now)]


def wait_until(step: dict[str, Any], now: datetime, tz: ZoneInfo) -> datetime:
    """When a `wait` ends: N seconds on; N days on in the tenant's calendar (the same
    local time of day, whatever the server's zone or a DST change); or the next HH:MM
    in the tenant's zone (today's if it is still ahead, else tomorrow's)."""
    if "seconds" in step:
        return now + timedelta(seconds=int(step["seconds"]))
    local = now.astimezone(tz)
    if "days" in step:
        later = datetime.combine(
            local.date() + timedelta(days=int(step["days"])), local.timetz().replace(tzinfo=None)
        ).replace(tzinfo=tz)
        return later
    hours, minutes = (int(p) for p in str(step["until"]).split(":"))
    today = datetime.combine(local.date(), time(hours, minutes), tzinfo=tz)
    return (
        today
        if today > local
        else datetime.combine(local.date() + timedelta(days=1), time(hours, minutes), tzinfo=tz)
    )


def _duration(raw: dict[str, int]) -> timedelta:
    if "seconds" in raw:
        return timedelta(seconds=raw["seconds"])
    return timedelta(days=raw["days"])


def pick_variant(step: dict[str, Any], enrolment_id: int) -> dict[str, Any] | None:
    """The split's variant for an enrolment (None: the holdout), by a stable hash of the
    enrolment and the step, so a step run again routes the same way."""
    digest = hashlib.sha256(f"{enrolment_id}:{step['id']}".encode()).digest()
    share = int.from_bytes(digest[:8], "big") / 2**64
    holdout = float(step.get("holdout", 0))
    if share < holdout:
        return None
    share = (share - holdout) / (1 - holdout)
    total = sum(int(v["weight"]) for v in step["variants"])
    point = share * total
    for variant in step["variants"]:
        point -= int(variant["weight"])
        if point < 0:
            return dict(variant)
    return dict(step["variants"][-1])


def listens_for(definition: dict[str, Any], e: Enrolment) -> list[str]:
    """What an enrolment listens for where it now is: the journey's goals, and the event
    of the wait_for it waits at."""
    wanted = set(goal_events(definition))
    if e.status == "waiting":
        step = _step(definition, e.step_id)
        if step is not None and step["type"] == "wait_for":
            wanted.add(step["event"])
    return sorted(wanted)


_UPDATE = text(
    """
    UPDATE campaign_enrolments e
       SET status = u.status, step_id = u.step_id, due_at = u.due_at, seq = u.seq,
           variant = u.variant, listens = CAST(u.listens AS text[]),
           step_since = COALESCE(u.step_since, e.step_since),
           ended_at = CASE WHEN u.status IN ('done', 'exited', 'converted')
                           THEN CAST(:now AS timestamptz) END,
           end_reason = u.end_reason
      FROM (SELECT * FROM unnest(CAST(:ids AS bigint[]), CAST(:statuses AS text[]),
                                 CAST(:steps AS text[]), CAST(:dues AS timestamptz[]),
                                 CAST(:seqs AS int[]), CAST(:variants AS text[]),
                                 CAST(:listens AS text[]), CAST(:sinces AS timestamptz[]),
                                 CAST(:reasons AS text[]))
              AS t(id, status, step_id, due_at, seq, variant, listens, step_since, end_reason)
           ) u
     WHERE e.id = u.id
    """
)


async def _write(
    session: AsyncSession,
    enrolments: list[Enrolment],
    definitions: dict[int, dict[str, Any]],
    plan: Plan,
    now: datetime,
) -> None:
    rows = [e for e in enrolments if e.moved]
    if rows:
        listens = [
            "{}" if e.ended else "{" + ",".join(listens_for(definitions[e.version], e)) + "}"
            for e in rows
        ]
        await session.execute(
            _UPDATE,
            {
                "now": now,
                "ids": [e.id for e in rows],
                "statuses": [e.status for e in rows],
                "steps": [e.step_id for e in rows],
                "dues": [e.due_at for e in rows],
                "seqs": [e.seq for e in rows],
                "variants": [e.variant for e in rows],
                "listens": listens,
                "sinces": [e.step_since for e in rows],
                "reasons": [e.end_reason for e in rows],
            },
        )
    await planner.write_sends(session, plan, now)
    if any(row["status"] == "planned" for row in plan.sends):
        await notify_sends(session)  # the dispatchers wake at commit
    await planner.write_tasks(session, plan)
    if plan.tag_requests or plan.awards:
        await publish_many(
            session,
            [("campaign.tag_requested", asked[0], asked[1]) for asked in plan.tag_requests]
            + [("campaign.points_awarded", award[0], award[1]) for award in plan.awards],
        )


__all__ = ["CHANNELS", "Enrolment", "Plan", "run", "wait_until"]
