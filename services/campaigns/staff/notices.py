"""Telling staff of their tasks: WeCom app messages (message/send) from the tenant's
app (`wecom_agent_id` in its campaign settings).

Every campaigns worker runs this loop. A new task (`create_task` steps; a mass
message to confirm has WeCom's own reminder) is told to its staff member once, and
an open task past its due time once more, as overdue. Each task is marked told in
the transaction that claims it, before the message goes: a worker killed in between
loses that message rather than sending it twice. Tenants without an agent id have
their tasks marked told without a message (the task list shows them).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import defaultdict
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import text

from services import users
from services.campaigns import clock
from services.campaigns.governor.planner import settings_of
from services.campaigns.sends import wecom_api
from services.campaigns.sends.http import shared_client
from services.users.wecom_client import WeComApiError, WeComUnavailable
from shared.db import unit_of_work
from shared.relay import wait_any
from shared.runtime import Runtime
from shared.tenancy import tenant_timezone

log = logging.getLogger("scrm.campaigns.staff")
BATCH = 200

_CLAIM = text(
    """
    WITH due AS (
        SELECT id, CASE WHEN notified_at IS NULL THEN 'new' ELSE 'overdue' END AS what
          FROM campaign_staff_tasks
         WHERE kind = 'task' AND staff_userid IS NOT NULL
           AND (notified_at IS NULL
                OR (status = 'open' AND due_at < :now AND reminded_at IS NULL))
         ORDER BY id
         LIMIT :limit
           FOR UPDATE SKIP LOCKED
    )
    UPDATE campaign_staff_tasks t
       SET notified_at = coalesce(t.notified_at, :now),
           reminded_at = CASE WHEN due.what = 'overdue' THEN :now ELSE t.reminded_at END
      FROM due
     WHERE t.id = due.id
    RETURNING t.id, t.tenant_id, t.staff_userid, t.title, t.due_at, due.what
    """
)


class StaffNotices:
    def __init__(self, runtime: Runtime, *, idle_poll_seconds: float = 5.0) -> None:
        self.runtime = runtime
        self.idle_poll_seconds = idle_poll_seconds

    async def step(self) -> int:
        now = clock.now()
        async with unit_of_work(self.runtime.sessionmaker) as session:
            rows = (await session.execute(_CLAIM, {"now": now, "limit": BATCH})).all()
            by_tenant: dict[uuid.UUID, list[Any]] = defaultdict(list)
            for row in rows:
                by_tenant[row.tenant_id].append(row)
            plans = []
            for tenant_id, tasks in by_tenant.items():
                settings = await settings_of(session, tenant_id)
                if settings.wecom_agent_id is None:
                    continue
                tz = ZoneInfo(await tenant_timezone(session, tenant_id))
                client = await users.wecom_api_client(
                    session, tenant_id, max_retries=1, http=shared_client()
                )
                if client is not None:
                    plans.append((client, settings.wecom_agent_id, tz, tasks))
        for client, agent_id, zone, tasks in plans:
            try:
                for task in tasks:
                    due = task.due_at.astimezone(zone).strftime("%Y-%m-%d %H:%M")
                    lead = "新任务" if task.what == "new" else "任务已逾期"
                    message = f"{lead}: {task.title} (截止 {due})"
                    try:
                        await wecom_api.send_app_text(client, agent_id, task.staff_userid, message)
                    except (WeComApiError, WeComUnavailable) as exc:
                        log.warning("task %s: the staff message failed: %s", task.id, exc)
            finally:
                await client.aclose()
        return len(rows)

    async def drain(self) -> int:
        total = 0
        while handled := await self.step():
            total += handled
        return total

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                handled = await self.step()
            except Exception:
                log.exception("staff notices: a round failed")
                handled = 0
            if not handled:
                await wait_any(stop, None, self.idle_poll_seconds)
