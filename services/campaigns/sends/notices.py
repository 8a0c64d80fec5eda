"""The points service's `points.expiring` notices, told to the member on the channels
the notice names (SPEC §4: in-app, SMS and WeCom).

Each (notice, channel) is one send, keyed `notice:<notice_id>:<channel>`, so a notice
delivered twice sends once. The text is the tenant's `expiry_notice` template (its
campaign settings), rendered with `expiring_points` and `expiring_at` from the notice
itself. The governor holds them to the same rules as a journey's sends: consent,
the sensitive-word filter, caps and the WeCom quota (a skip is recorded with its
reason), and quiet hours, after which the send goes out (it is due at the window's
end). `wecom_template` reaches the member on WeCom the only way WeCom allows a
message to a customer: a 1:1 mass message from the staff member who follows them,
which they confirm in their client (and which counts under the monthly quota).
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncSession

from services.campaigns import clock
from services.campaigns.governor import planner
from services.campaigns.runner import engine
from services.campaigns.runner.engine import Enrolment
from services.campaigns.sends.dispatch import notify
from shared.events import Event, subscribe_many
from shared.tenancy import tenant_timezone

# The notice's channel names and the campaign channel each is sent on.
NOTICE_CHANNELS = {"in_app": "in_app", "sms": "sms", "wecom_template": "wecom_single"}


@subscribe_many("campaigns", "points.expiring", name="campaigns.notify_expiring_points")
async def notify_expiring_points(session: AsyncSession, events: list[Event]) -> None:
    now = clock.now()
    by_tenant: dict[uuid.UUID, list[Event]] = defaultdict(list)
    for event in events:
        if event.tenant_id is not None:
            by_tenant[event.tenant_id].append(event)
    planned = False
    for tenant_id, batch in sorted(by_tenant.items()):
        tz = ZoneInfo(await tenant_timezone(session, tenant_id))
        governor = await planner.Governor.load(session, tenant_id, now, tz)
        template = governor.settings.expiry_notice
        by_channel: dict[str, list[Enrolment]] = defaultdict(list)
        for event in batch:
            payload = event.payload
            try:
                contact = uuid.UUID(str(payload["contact_id"]))
                notice_id = int(payload["notice_id"])
                points = int(payload["points"])
            except (KeyError, TypeError, ValueError):
                continue
            context: dict[str, Any] = {
                "expiring_points": points,
                "expiring_at": str(payload.get("expires_on", "")) or None,
                "event_id": event.id,
                "event_type": event.type,
            }
            for name in payload.get("channels") or []:
                channel = NOTICE_CHANNELS.get(str(name))
                if channel is None:
                    continue
                by_channel[channel].append(
                    Enrolment(
                        id=notice_id,
                        tenant_id=tenant_id,
                        campaign_id=0,
                        version=0,
                        contact_id=contact,
                        status="active",
                        step_id="points_expiring",
                        due_at=now,
                        seq=0,
                        variant=None,
                        context=context,
                        entered_at=now,
                        send_key=f"notice:{notice_id}:{name}",
                    )
                )
        plan = engine.Plan()
        for channel, group in sorted(by_channel.items()):
            step = {
                "id": "points_expiring",
                "type": "action",
                "action": "send",
                "channel": channel,
                "content": {"text": template},
                "over_quota": "skip",
            }
            await governor.plan_sends(session, {}, step, group, plan)
        for row in plan.sends:
            row["campaign_id"] = None
            row["version"] = None
            if row["status"] == "deferred" and row["reason"] == "quiet_hours":
                # No journey step runs it again: it is planned for the window's end.
                row["status"] = "planned"
        await planner.write_sends(session, plan, now)
        planned |= any(r["status"] == "planned" for r in plan.sends)
    if planned:
        await notify(session)
