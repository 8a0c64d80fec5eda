"""The governor at planning time: whether, when and to whom each send goes.

For a group of enrolments at one send step it decides, in a few statements for the
whole group: consent (the users service's opt-outs for the channel's consent
channel), the rendered text (a variable without a value skips the send), the
sensitive-word filter (block: skipped; review: held for ops), quiet hours (deferred
to the window's end, never dropped), the WeCom mass-message quota per contact and
per staff member a day, and the tenant's frequency caps per channel and per
lifecycle stage (skipped, or postponed to when the window ends if the step says
`over_quota: postpone`). Counting takes every send of the contact still going or
gone (planned, sending, sent, delivered), so a plan never goes beyond a quota;
each contact is locked for the batch (advisory lock, in contact order) so that two
journeys planning for one contact at once count each other's sends.

A welcome message answers the customer's own add: neither quiet hours nor caps hold
it back (its code expires in 20 s), consent still does.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services import points, users
from services.campaigns.governor import rules
from services.campaigns.governor.settings import Cap, GovernorSettings, load
from services.campaigns.journeys.definition import CHANNELS
from services.campaigns.sends import render
from services.campaigns.sends.models import CampaignSettingsRow
from services.campaigns.staff.models import StaffTask

if TYPE_CHECKING:
    from services.campaigns.runner.engine import Enrolment, Plan

# A welcome code is valid for 20 s after the add (WeCom): later is no use trying.
WELCOME_CODE_SECONDS = 20
COUNTED = ("planned", "sending", "sent", "delivered")


@dataclass(frozen=True)
class SendOutcome:
    status: str  # planned, deferred, skipped
    reason: str | None = None
    defer_until: datetime | None = None  # the step waits until then (quiet hours, postponed)
    exit_reason: str | None = None  # the enrolment leaves the journey (opted out: exit)


async def settings_of(session: AsyncSession, tenant_id: uuid.UUID) -> GovernorSettings:
    raw = await session.scalar(
        select(CampaignSettingsRow.settings).where(CampaignSettingsRow.tenant_id == tenant_id)
    )
    return load(raw)


_LOCK_CONTACTS = text(
    """
    SELECT pg_advisory_xact_lock(hashtextextended('campaigns.contact:' || c, 0))
      FROM unnest(CAST(:ids AS text[])) AS c ORDER BY c
    """
)

_COUNTS = text(
    """
    SELECT contact_id, channel, sender,
           count(*) FILTER (WHERE due_at >= :day) AS day,
           count(*) FILTER (WHERE due_at >= :week) AS week,
           count(*) FILTER (WHERE due_at >= :month) AS month
      FROM campaign_sends
     WHERE tenant_id = :tenant AND contact_id = ANY(CAST(:ids AS uuid[]))
       AND status IN ('planned', 'sending', 'sent', 'delivered')
       AND due_at >= :since AND channel <> 'wecom_welcome'
     GROUP BY contact_id, channel, sender
    """
)


@dataclass
class _Tally:
    day: int = 0
    week: int = 0
    month: int = 0

    def counts(self) -> rules.Counts:
        return rules.Counts(self.day, self.week, self.month)

    def add(self, other: _Tally | None = None) -> None:
        if other is None:
            self.day += 1
            self.week += 1
            self.month += 1
        else:
            self.day += other.day
            self.week += other.week
            self.month += other.month


class Governor:
    def __init__(
        self, tenant_id: uuid.UUID, settings: GovernorSettings, now: datetime, tz: ZoneInfo
    ) -> None:
        self.tenant_id = tenant_id
        self.settings = settings
        self.now = now
        self.tz = tz
        self.windows = rules.Windows.at(now, tz)
        self._locked: set[uuid.UUID] = set()
        # (contact, channel, sender) -> counts, loaded per contact once.
        self._tallies: dict[tuple[uuid.UUID, str, str | None], _Tally] = {}
        self._loaded: set[uuid.UUID] = set()

    @classmethod
    async def load(
        cls, session: AsyncSession, tenant_id: uuid.UUID, now: datetime, tz: ZoneInfo
    ) -> Governor:
        return cls(tenant_id, await settings_of(session, tenant_id), now, tz)

    async def _lock_and_count(self, session: AsyncSession, contacts: list[uuid.UUID]) -> None:
        fresh = sorted({c for c in contacts if c not in self._loaded}, key=str)
        if not fresh:
            return
        await session.execute(_LOCK_CONTACTS, {"ids": [str(c) for c in fresh]})
        w = self.windows
        rows = await session.execute(
            _COUNTS,
            {
                "tenant": self.tenant_id,
                "ids": fresh,
                "day": w.day,
                "week": w.week,
                "month": w.month,
                "since": min(w.week, w.month),
            },
        )
        for row in rows:
            self._tallies[(row.contact_id, row.channel, row.sender)] = _Tally(
                int(row.day), int(row.week), int(row.month)
            )
        self._loaded.update(fresh)

    def _sum(
        self, contact: uuid.UUID, channels: tuple[str, ...] | None, sender: str | None = None
    ) -> rules.Counts:
        total = _Tally()
        for (c, channel, who), tally in self._tallies.items():
            if c != contact or (channels is not None and channel not in channels):
                continue
            if sender is not None and who != sender:
                continue
            total.add(tally)
        return total.counts()

    def _count(self, contact: uuid.UUID, channel: str, sender: str | None) -> None:
        self._tallies.setdefault((contact, channel, sender), _Tally()).add()

    def _over(
        self, contact: uuid.UUID, channel: str, sender: str | None, stage: str | None
    ) -> tuple[str, datetime] | None:
        """(reason, when the fullest window ends) when one more send breaks a rule."""
        s, w = self.settings, self.windows
        if channel in rules.MASS:
            until = rules.over(rules.mass_quota(s), self._sum(contact, rules.MASS), w)
            if until is not None:
                return "quota", until
            if sender is not None:
                per_staff = Cap(day=s.wecom_per_staff_daily)
                until = rules.over(per_staff, self._sum(contact, rules.MASS, sender), w)
                if until is not None:
                    return "quota", until
        cap = s.caps.get(channel)
        if cap is not None:
            until = rules.over(cap, self._sum(contact, (channel,)), w)
            if until is not None:
                return "cap", until
        stage_cap = s.stage_caps.get(stage or "")
        if stage_cap is not None:
            until = rules.over(stage_cap, self._sum(contact, None), w)
            if until is not None:
                return "cap", until
        return None

    async def plan_sends(
        self,
        session: AsyncSession,
        definition: dict[str, Any],
        step: dict[str, Any],
        group: list[Enrolment],
        plan: Plan,
    ) -> dict[int, SendOutcome]:
        channel = step["channel"]
        contacts = [e.contact_id for e in group]
        facts = await users.message_facts(session, self.tenant_id, contacts)
        opted = await users.opted_out(session, self.tenant_id, contacts, CHANNELS[channel])
        template = step["content"]["text"]
        wanted = render.variables(template)
        balances = (
            await points.message_facts(session, self.tenant_id, contacts, self.now)
            if wanted & render.POINTS_VARIABLES
            else {}
        )
        handles: dict[uuid.UUID, tuple[str, str]] = {}
        if channel in ("wecom_single", "wecom_group", "wecom_moment"):
            handles = await users.wecom_handles(session, self.tenant_id, contacts)
        pushed = channel in rules.PUSHED
        if channel != "wecom_welcome":
            await self._lock_and_count(session, contacts)
        quiet = rules.quiet_until(self.settings.quiet_hours, self.now, self.tz) if pushed else None
        outcomes: dict[int, SendOutcome] = {}
        for e in group:
            fact = facts.get(e.contact_id)
            sender = _sender(channel, e, handles)
            outcome, content = self._decide(
                definition, step, e, fact, opted, balances, handles, sender, quiet, template
            )
            outcomes[e.id] = outcome
            if outcome.status == "planned":
                self._count(e.contact_id, channel, sender)
            key = e.key
            if channel == "wecom_welcome" and content.get("welcome_code"):
                # One per welcome code, whoever plans it first (the welcome lane ahead
                # of the users service's backlog, or this step).
                key = welcome_key(str(content["welcome_code"]))
            row = {
                "tenant_id": self.tenant_id,
                "key": key,
                "campaign_id": e.campaign_id,
                "version": e.version,
                "enrolment_id": None if e.send_key else e.id,
                "step_id": e.step_id,
                "contact_id": e.contact_id,
                "channel": channel,
                "status": outcome.status,
                "reason": outcome.reason,
                "content": content,
                "sender": sender,
                "due_at": outcome.defer_until or self.now,
            }
            plan.sends.append(row)
            if outcome.reason == "review":
                hits = rules.sensitive_hits(self.settings.sensitive_words.words, content["text"])
                plan.reviews.append((key, hits))
        return outcomes

    def _decide(
        self,
        definition: dict[str, Any],
        step: dict[str, Any],
        e: Enrolment,
        fact: dict[str, str | None] | None,
        opted: set[uuid.UUID],
        balances: dict[uuid.UUID, dict[str, object]],
        handles: dict[uuid.UUID, tuple[str, str]],
        sender: str | None,
        quiet: datetime | None,
        template: str,
    ) -> tuple[SendOutcome, dict[str, Any]]:
        channel = step["channel"]
        content: dict[str, Any] = {"text": template}
        if fact is None:
            return SendOutcome("skipped", "erased"), content
        if e.contact_id in opted:
            if definition.get("when_opted_out") == "exit":
                return SendOutcome("skipped", "consent", exit_reason="opted_out"), content
            return SendOutcome("skipped", "consent"), content
        values = render.values_for(fact, balances.get(e.contact_id), e.context, self.tz)
        rendered = render.render(template, values)
        if rendered is None:
            return SendOutcome("skipped", "missing_variable"), content
        content = {"text": rendered}
        if channel == "wecom_welcome":
            code = e.context.get("welcome_code")
            if not code:
                return SendOutcome("skipped", "no_welcome_code"), content
            if self.now - e.entered_at > timedelta(seconds=WELCOME_CODE_SECONDS):
                return SendOutcome("skipped", "welcome_code_expired"), content
            content["welcome_code"] = code
        elif channel in ("wecom_single", "wecom_group", "wecom_moment"):
            handle = handles.get(e.contact_id)
            if handle is None:
                return SendOutcome("skipped", "not_on_wecom"), content
            content["external_userid"] = handle[0]
            if channel == "wecom_group":
                # A group message goes to the group the contact joined (its trigger's).
                chat = e.context.get("chat_id")
                if not chat:
                    return SendOutcome("skipped", "no_group"), content
                content["chat_id"] = chat
        elif channel == "sms":
            if self.settings.sms_provider is None:
                return SendOutcome("skipped", "no_sms"), content
            if not fact.get("phone"):
                return SendOutcome("skipped", "no_phone"), content
            content["phone"] = fact["phone"]
        words = self.settings.sensitive_words
        hits = rules.sensitive_hits(words.words, rendered)
        if hits:
            if words.mode == "block":
                return SendOutcome("skipped", "sensitive_word"), content
            return SendOutcome("deferred", "review"), content
        if channel == "wecom_welcome":
            return SendOutcome("planned"), content
        if quiet is not None:
            return SendOutcome("deferred", "quiet_hours", defer_until=quiet), content
        over = self._over(e.contact_id, channel, sender, fact.get("lifecycle_stage"))
        if over is not None:
            reason, until = over
            if step.get("over_quota") == "postpone":
                return SendOutcome("deferred", reason, defer_until=until), content
            return SendOutcome("skipped", reason), content
        return SendOutcome("planned"), content

    async def plan_tasks(
        self, session: AsyncSession, step: dict[str, Any], group: list[Enrolment], plan: Plan
    ) -> None:
        facts = await users.message_facts(session, self.tenant_id, [e.contact_id for e in group])
        due = self.now + timedelta(hours=int(step["due_in_hours"]))
        for e in group:
            fact = facts.get(e.contact_id) or {}
            staff = e.context.get("staff_userid") or fact.get("owner")
            values = render.values_for(fact, None, e.context, self.tz) if fact else {}
            title = render.render(step["title"], values) or step["title"]
            plan.tasks.append(
                {
                    "tenant_id": self.tenant_id,
                    "key": e.key,
                    "kind": "task",
                    "campaign_id": e.campaign_id,
                    "enrolment_id": e.id,
                    "step_id": e.step_id,
                    "contact_id": e.contact_id,
                    "staff_userid": staff,
                    "title": title,
                    "due_at": due,
                }
            )

    async def plan_webhooks(
        self, session: AsyncSession, step: dict[str, Any], group: list[Enrolment], plan: Plan
    ) -> None:
        opted = await users.opted_out(
            session, self.tenant_id, [e.contact_id for e in group], "webhook"
        )
        for e in group:
            body = {
                "campaign_id": e.campaign_id,
                "version": e.version,
                "step_id": e.step_id,
                "contact_id": str(e.contact_id),
                "enrolment_id": e.id,
                "key": e.key,
                "trigger": e.context,
            }
            skipped = e.contact_id in opted
            plan.sends.append(
                {
                    "tenant_id": self.tenant_id,
                    "key": e.key,
                    "campaign_id": e.campaign_id,
                    "version": e.version,
                    "enrolment_id": e.id,
                    "step_id": e.step_id,
                    "contact_id": e.contact_id,
                    "channel": "webhook",
                    "status": "skipped" if skipped else "planned",
                    "reason": "consent" if skipped else None,
                    "content": {"url": step["url"], "body": body},
                    "sender": None,
                    "due_at": self.now,
                }
            )


def _sender(channel: str, e: Enrolment, handles: dict[uuid.UUID, tuple[str, str]]) -> str | None:
    if channel == "wecom_welcome":
        staff = e.context.get("staff_userid")
        return str(staff) if staff else None
    handle = handles.get(e.contact_id)
    return handle[1] if handle is not None else None


def welcome_key(code: str) -> str:
    return f"welcome:{code}"


async def write_sends(session: AsyncSession, plan: Plan, now: datetime) -> None:
    """Insert the planned sends; a send held back earlier (deferred under the same key)
    is updated to what was decided now. A welcome message planned already (by the
    welcome lane) keeps its decision and gets the contact and enrolment it lacked.
    Reviews are opened for sends held for one."""
    if not plan.sends:
        return
    from services.campaigns.sends.models import CampaignReview, CampaignSend

    welcomes = [r for r in plan.sends if r["key"].startswith("welcome:")]
    if welcomes:
        statement = insert(CampaignSend).values(welcomes)
        await session.execute(
            statement.on_conflict_do_update(
                index_elements=["tenant_id", "key"],
                set_={
                    "contact_id": func.coalesce(
                        CampaignSend.contact_id, statement.excluded.contact_id
                    ),
                    "enrolment_id": func.coalesce(
                        CampaignSend.enrolment_id, statement.excluded.enrolment_id
                    ),
                    "updated_at": now,
                },
            )
        )
    others = [r for r in plan.sends if not r["key"].startswith("welcome:")]
    for start in range(0, len(others), 1000):
        chunk = others[start : start + 1000]
        statement = insert(CampaignSend).values(chunk)
        await session.execute(
            statement.on_conflict_do_update(
                index_elements=["tenant_id", "key"],
                set_={
                    "status": statement.excluded.status,
                    "reason": statement.excluded.reason,
                    "content": statement.excluded.content,
                    "sender": statement.excluded.sender,
                    "due_at": statement.excluded.due_at,
                    "updated_at": now,
                },
                where=(CampaignSend.status == "deferred") & (CampaignSend.reason != "review"),
            )
        )
    if plan.reviews:
        by_key = defaultdict(list)
        for key, words in plan.reviews:
            by_key[key] = words
        tenant = plan.sends[0]["tenant_id"]
        found = await session.execute(
            select(CampaignSend.id, CampaignSend.key).where(
                CampaignSend.tenant_id == tenant, CampaignSend.key.in_(list(by_key))
            )
        )
        rows = [{"tenant_id": tenant, "send_id": i, "words": by_key[k]} for i, k in found]
        if rows:
            await session.execute(
                insert(CampaignReview)
                .values(rows)
                .on_conflict_do_nothing(index_elements=["send_id"])
            )


async def write_tasks(session: AsyncSession, plan: Plan) -> None:
    if plan.tasks:
        await session.execute(
            insert(StaffTask)
            .values(plan.tasks)
            .on_conflict_do_nothing(index_elements=["tenant_id", "key"])
        )
