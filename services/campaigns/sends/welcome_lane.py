"""The welcome lane: welcome messages ahead of a backlog of callbacks.

A WelcomeCode is valid for 20 s. Under a flood, the users service may apply an
`add_external_contact` callback (and publish its `contact.added`) later than that,
so every campaigns worker also reads the stored callbacks themselves, as soon as
they are stored (`users.recent_welcome_codes`, woken by the users service's
`scrm_inbound` notification, polling every 100 ms), and for each welcome code whose
channel code (`State`) a live `contact.added` journey of the tenant takes, and whose
entry step is a `wecom_welcome` send, plans that send at once: the same governor
rules as the step (consent when the customer is known, the template, the
sensitive-word filter; never quiet hours or caps), under the key
`welcome:<code>`, and sends it from there (one attempt, as the dispatcher
would). When the users service then applies the callback, the journey enrols the
contact as usual, and its step finds the send planned under the same key: it fills
in the contact and the enrolment, and nothing is sent twice. A welcome the lane
cannot decide (a template variable the callback does not give, such as the name of
a customer new to us) is left to the step.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import OrderedDict
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import text

from services import users
from services.campaigns import clock
from services.campaigns.governor import planner, rules
from services.campaigns.runner.engine import Plan
from services.campaigns.sends import render
from services.campaigns.sends.dispatch import SendDispatcher
from shared.db import unit_of_work
from shared.events import INBOUND_CHANNEL
from shared.loops import ListeningLoop
from shared.runtime import Runtime

log = logging.getLogger("scrm.campaigns.welcome")

# Older codes are no use: WeCom refuses them after 20 s.
WITHIN_SECONDS = planner.WELCOME_CODE_SECONDS
# Live welcome journeys per tenant are looked up again after this long.
JOURNEYS_TTL_SECONDS = 2.0
SEEN = 50_000
UTC_ZONE = ZoneInfo("UTC")

_WELCOME_JOURNEYS = text(
    """
    SELECT c.id, c.version, v.definition
      FROM campaigns c
      JOIN campaign_versions v ON v.campaign_id = c.id AND v.version = c.version
     WHERE c.tenant_id = :tenant AND c.status = 'live' AND c.trigger_type = 'contact.added'
     ORDER BY c.id
    """
)

_START = text("SELECT coalesce(max(id), 0) FROM inbound_events")


class WelcomeLane(ListeningLoop):
    channel = INBOUND_CHANNEL
    always_wait = True

    def __init__(self, runtime: Runtime, *, idle_poll_seconds: float = 0.1) -> None:
        super().__init__(runtime, idle_poll_seconds=idle_poll_seconds)
        self.cursor: int | None = None
        self._seen: OrderedDict[int, None] = OrderedDict()
        self._journeys: dict[uuid.UUID, tuple[float, list[Any]]] = {}
        self._dispatcher = SendDispatcher(runtime)

    async def step(self) -> int:
        async with unit_of_work(self.runtime.sessionmaker) as session:
            if self.cursor is None:
                # Rows stored before this worker started are older than a code lives.
                self.cursor = max(0, int(await session.scalar(_START) or 0) - 5_000)
            # Ids are handed out before commit: look back a little for late commits.
            fresh, high = await users.recent_welcome_codes(
                session, max(0, self.cursor - 500), WITHIN_SECONDS, skip=self._seen.keys()
            )
            self.cursor = max(self.cursor, high)
            for fact in fresh:
                self._seen[int(str(fact["inbound_id"]))] = None
            # Only the callbacks a live welcome journey takes (by channel code) go on.
            wanted: dict[uuid.UUID, list[tuple[dict[str, Any], Any]]] = {}
            for fact in fresh:
                tenant = uuid.UUID(str(fact["tenant_id"]))
                journey = self._journey_for(await self._welcome_journeys(session, tenant), fact)
                if journey is not None:
                    wanted.setdefault(tenant, []).append((fact, journey))
            planned: dict[uuid.UUID, list[str]] = {}
            for tenant, found in wanted.items():
                known = await users.contacts_by_external_userid(
                    session, tenant, [str(f["external_userid"]) for f, _ in found]
                )
                for fact, journey in found:
                    fact["contact_id"] = known.get(str(fact["external_userid"]))
                    key = await self._plan(session, fact, journey)
                    if key is not None:
                        planned.setdefault(tenant, []).append(key)
            while len(self._seen) > SEEN:
                self._seen.popitem(last=False)
        # Sent from here at once (no round trip through the dispatcher's wake-up).
        for tenant_id, keys in planned.items():
            await self._dispatcher.send_now(tenant_id, keys)
        return sum(len(k) for k in planned.values())

    @staticmethod
    def _journey_for(journeys: list[Any], fact: dict[str, Any]) -> Any | None:
        """The first live journey that takes this callback and welcomes first."""
        for journey in journeys:
            definition = journey[2]
            trigger = definition["trigger"]
            if "states" in trigger and fact["state"] not in trigger["states"]:
                continue
            step = definition["steps"][0]
            if step["type"] == "action" and step.get("channel") == "wecom_welcome":
                return journey
        return None

    async def _plan(self, session: Any, fact: dict[str, Any], journey: Any) -> str | None:
        """The key of the welcome planned for this callback, if one was."""
        tenant_id = uuid.UUID(str(fact["tenant_id"]))
        campaign_id, version, definition = journey
        step = definition["steps"][0]
        row = await self._decide(session, tenant_id, definition, step, fact)
        if row is None:
            return None
        row.update(campaign_id=campaign_id, version=version, step_id=step["id"])
        await planner.write_sends(session, Plan(sends=[row]), clock.now())
        return str(row["key"]) if row["status"] == "planned" else None

    async def _decide(
        self,
        session: Any,
        tenant_id: uuid.UUID,
        definition: dict[str, Any],
        step: dict[str, Any],
        fact: dict[str, Any],
    ) -> dict[str, Any] | None:
        now = clock.now()
        if now - fact["received_at"] > timedelta(seconds=WITHIN_SECONDS):
            return None
        settings = await planner.settings_of(session, tenant_id)
        contact: uuid.UUID | None = fact["contact_id"]
        facts: dict[str, Any] = {"name": None}
        status, reason = "planned", None
        if contact is not None:
            known = await users.message_facts(session, tenant_id, [contact])
            if contact not in known:
                return None  # merged or erased: the step decides
            facts = dict(known[contact])
            if contact in await users.opted_out(session, tenant_id, [contact], "wecom"):
                status, reason = "skipped", "consent"
        template = step["content"]["text"]
        rendered = render.render(template, render.values_for(facts, None, {}, UTC_ZONE))
        if rendered is None:
            return None  # a variable the callback cannot give: left to the step
        if status == "planned":
            hits = rules.sensitive_hits(settings.sensitive_words.words, rendered)
            if hits and settings.sensitive_words.mode == "block":
                status, reason = "skipped", "sensitive_word"
            elif hits:
                return None  # held for review: the step opens the review
        return {
            "tenant_id": tenant_id,
            "key": planner.welcome_key(str(fact["welcome_code"])),
            "enrolment_id": None,
            "contact_id": contact,
            "channel": "wecom_welcome",
            "status": status,
            "reason": reason,
            "content": {"text": rendered, "welcome_code": fact["welcome_code"]},
            "sender": fact["staff_userid"],
            "due_at": now,
        }

    async def _welcome_journeys(self, session: Any, tenant_id: uuid.UUID) -> list[Any]:
        cached = self._journeys.get(tenant_id)
        if cached is not None and time.monotonic() - cached[0] < JOURNEYS_TTL_SECONDS:
            return cached[1]
        rows = [
            (r.id, r.version, r.definition)
            for r in await session.execute(_WELCOME_JOURNEYS, {"tenant": tenant_id})
        ]
        self._journeys[tenant_id] = (time.monotonic(), rows)
        return rows
