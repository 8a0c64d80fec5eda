"""WeCom mass messages and Moments: every campaigns worker process runs this queue.

WeCom sends a mass message only once the staff member confirms it in their client,
so a send on `wecom_single` (1:1), `wecom_group` or `wecom_moment` is a task per
staff member:

1. **Bundle.** Planned sends are claimed (`FOR UPDATE SKIP LOCKED`) once their
   journey step has planned the whole wave of contacts due at it (none of them is
   still due there; at most 5 minutes), and grouped by (tenant, channel, sender,
   text). Each group of up to 10,000 recipients (more are split, never dropped)
   becomes a `campaign_wecom_jobs` row, and its sends become `sending` with the job
   as their `provider_ref`, in one transaction, before any call. A staff task
   (`wecom_mass`) tells the staff member what to confirm.
2. **Call.** A job is claimed, its attempt counted and a lease set (committed), then
   add_msg_template (or add_moment_task) is called once, without the client's own
   retries. The msgid is stored with the job. WeCom has no idempotency key: a job
   claimed again after an attempt (a worker killed during the call, an answer lost)
   first asks get_groupmsg_list_v2 for a message of the same creator and text made
   since that attempt, whose recipients are the job's, and adopts it; only when
   there is none is it called again. So a crash never sends a second mass message.
3. **Follow up.** Every `SCRM_CAMPAIGNS_WECOM_CHECK_SECONDS` a created job asks
   get_groupmsg_task and get_groupmsg_send_result: each recipient's send becomes
   `delivered` (1), `failed`/`not_friend` (2) or `skipped`/`quota` (3, WeCom's over
   quota: not a failure). A staff member who has not confirmed after
   `..._WECOM_REMIND_AFTER_SECONDS` is reminded (remind_groupmsg_send, at most 3 in
   24 h). At the deadline (`..._WECOM_DEADLINE_HOURS`) the message is cancelled
   (cancel_groupmsg_send), what was not sent fails (`not_confirmed`) and the staff
   task is overdue.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services import users
from services.campaigns import clock
from services.campaigns.sends import wecom_api
from services.campaigns.sends.http import shared_client
from services.campaigns.settings import campaigns_settings
from services.users.wecom_client import WeComApiError, WeComClient
from shared.db import unit_of_work
from shared.relay import wait_any
from shared.runtime import Runtime

log = logging.getLogger("scrm.campaigns.wecom")

CHANNEL_KIND = {"wecom_single": "single", "wecom_group": "group", "wecom_moment": "moment"}
BUNDLE_LIMIT = 50_000
BUNDLE_ROUND = 500_000
JOBS_PER_ROUND = 50
MAX_REMINDERS_A_DAY = 3
# A lost answer's message is looked for from this long before the attempt began.
RECONCILE_SLACK_SECONDS = 300

# The journey steps still planning mass sends: some of their contacts are due at them.
# Their sends wait, so that a wave of contacts due together makes one task per staff
# member and text (not one per runner batch), unless they have waited MAX_GATHER long.
_STILL_PLANNING = text(
    """
    SELECT DISTINCT e.campaign_id, e.step_id
      FROM campaign_enrolments e
     WHERE e.campaign_id IN (SELECT DISTINCT campaign_id FROM campaign_sends
                              WHERE status = 'planned' AND campaign_id IS NOT NULL
                                AND channel IN ('wecom_single', 'wecom_group', 'wecom_moment'))
       AND e.status = 'active' AND e.due_at <= :now
    """
)

_PLANNED = text(
    """
    SELECT id, tenant_id, campaign_id, channel, sender, content
      FROM campaign_sends
     WHERE status = 'planned' AND due_at <= :now
       AND channel IN ('wecom_single', 'wecom_group', 'wecom_moment')
       AND (campaign_id IS NULL OR created_at < :gathered
            OR (campaign_id, step_id) NOT IN (
                SELECT * FROM unnest(CAST(:campaigns AS bigint[]), CAST(:steps AS text[]))))
       AND id > :after
     ORDER BY id
     LIMIT :limit
       FOR UPDATE SKIP LOCKED
    """
)
MAX_GATHER_SECONDS = 300
_BUNDLER_LOCK = text(
    "SELECT pg_try_advisory_xact_lock(hashtextextended('campaigns.wecom_bundle', 0))"
)

_NEW_JOB = text(
    """
    INSERT INTO campaign_wecom_jobs
           (tenant_id, kind, campaign_id, sender, text, recipients, status, due_at,
            deadline_at)
    VALUES (:tenant, :kind, :campaign, :sender, :text, CAST(:recipients AS jsonb), 'calling',
            :now, :deadline)
    RETURNING id
    """
)

_SENDS_OF_JOB = text(
    """
    UPDATE campaign_sends SET status = 'sending', provider_ref = :ref, attempts = attempts + 1,
           updated_at = :now
     WHERE id = ANY(CAST(:ids AS bigint[]))
    """
)

_TASK = text(
    """
    INSERT INTO campaign_staff_tasks (tenant_id, key, kind, campaign_id, staff_userid, title,
                                      status, due_at)
    VALUES (:tenant, :key, 'wecom_mass', :campaign, :staff, :title, 'open', :due)
    ON CONFLICT (tenant_id, key) DO NOTHING
    """
)

_CLAIM_JOBS = text(
    """
    SELECT id, tenant_id, kind, campaign_id, sender, text, recipients, status, msgid,
           attempts, call_started_at, deadline_at, reminded_at, created_at
      FROM campaign_wecom_jobs
     WHERE status IN ('calling', 'created') AND due_at <= :now
     ORDER BY due_at, id
     LIMIT :limit
       FOR UPDATE SKIP LOCKED
    """
)

_LEASE = text(
    """
    UPDATE campaign_wecom_jobs
       SET attempts = attempts + CASE WHEN status = 'calling' THEN 1 ELSE 0 END,
           call_started_at = CASE WHEN status = 'calling' THEN :now ELSE call_started_at END,
           due_at = :lease, updated_at = :now
     WHERE id = ANY(CAST(:ids AS bigint[]))
    """
)

_JOB = text(
    """
    UPDATE campaign_wecom_jobs
       SET status = :status, msgid = COALESCE(:msgid, msgid), due_at = :due, error = :error,
           reminded_at = CAST(:reminded AS jsonb), updated_at = :now
     WHERE id = :id
    """
)

_RESULTS = text(
    """
    UPDATE campaign_sends s
       SET status = r.status, reason = r.reason, updated_at = CAST(:now AS timestamptz),
           sent_at = CASE WHEN r.status = 'delivered' THEN CAST(:now AS timestamptz)
                          ELSE s.sent_at END,
           delivered_at = CASE WHEN r.status = 'delivered' THEN CAST(:now AS timestamptz)
                               ELSE s.delivered_at END
      FROM (SELECT * FROM unnest(CAST(:recipients AS text[]), CAST(:statuses AS text[]),
                                 CAST(:reasons AS text[])) AS t(recipient, status, reason)) r
     WHERE s.tenant_id = :tenant AND s.provider_ref = :ref AND s.status = 'sending'
       AND s.content->>:key = r.recipient
    """
)

_UNFINISHED = text(
    """
    UPDATE campaign_sends SET status = 'failed', reason = :reason, updated_at = :now
     WHERE tenant_id = :tenant AND provider_ref = :ref AND status = 'sending'
    """
)

_TASK_STATUS = text(
    """
    UPDATE campaign_staff_tasks SET status = CAST(:status AS varchar),
           confirmed_at = CASE WHEN CAST(:status AS varchar) = 'confirmed'
                               THEN CAST(:now AS timestamptz) ELSE confirmed_at END
     WHERE tenant_id = :tenant AND key = :key AND status IN ('open', 'overdue')
    """
)

_ADOPTED = text(
    "SELECT msgid FROM campaign_wecom_jobs WHERE tenant_id = :tenant AND msgid IS NOT NULL "
    "AND msgid = ANY(CAST(:msgids AS text[]))"
)


def recipient_key(kind: str) -> str:
    return "chat_id" if kind == "group" else "external_userid"


class WeComMassQueue:
    def __init__(self, runtime: Runtime, *, idle_poll_seconds: float = 1.0) -> None:
        self.runtime = runtime
        self.idle_poll_seconds = idle_poll_seconds

    async def step(self) -> int:
        bundled = await self.bundle()
        ran = await self.run_jobs()
        return bundled + ran

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
                log.exception("wecom mass queue: a round failed; retrying in 1 s")
                handled = 0
            if not handled:
                await wait_any(stop, None, self.idle_poll_seconds)

    # -- 1. bundle ------------------------------------------------------------------

    async def bundle(self) -> int:
        """Planned sends into jobs of one sender and text, up to 10,000 recipients each."""
        now = clock.now()
        settings = campaigns_settings()
        async with unit_of_work(self.runtime.sessionmaker) as session:
            # One bundler at a time: two taking halves of a wave would make two tasks
            # per staff member.
            if not await session.scalar(_BUNDLER_LOCK):
                return 0
            busy = (await session.execute(_STILL_PLANNING, {"now": now})).all()
            rows: list[Any] = []
            # A whole wave in one round (up to BUNDLE_ROUND), so that each staff member
            # gets one task per text however many contacts they have.
            while len(rows) < BUNDLE_ROUND:
                chunk = (
                    await session.execute(
                        _PLANNED,
                        {
                            "now": now,
                            "limit": BUNDLE_LIMIT,
                            "after": rows[-1].id if rows else 0,
                            "gathered": now - timedelta(seconds=MAX_GATHER_SECONDS),
                            "campaigns": [b.campaign_id for b in busy],
                            "steps": [b.step_id for b in busy],
                        },
                    )
                ).all()
                rows.extend(chunk)
                if len(chunk) < BUNDLE_LIMIT:
                    break
            groups: dict[tuple[Any, ...], list[Any]] = defaultdict(list)
            for row in rows:
                content = row.content or {}
                kind = CHANNEL_KIND[row.channel]
                recipient = content.get(recipient_key(kind)) or content.get("external_userid")
                key = (row.tenant_id, kind, row.campaign_id, row.sender, content.get("text"))
                groups[key].append((row.id, recipient))
            for (tenant, kind, campaign, sender, body), members in groups.items():
                for start in range(0, len(members), wecom_api.MAX_RECIPIENTS):
                    chunk = members[start : start + wecom_api.MAX_RECIPIENTS]
                    recipients = sorted({r for _, r in chunk if r})
                    job_id = await session.scalar(
                        _NEW_JOB,
                        {
                            "tenant": tenant,
                            "kind": kind,
                            "campaign": campaign,
                            "sender": sender,
                            "text": body,
                            "recipients": json.dumps(recipients),
                            "now": now,
                            "deadline": now + timedelta(hours=settings.wecom_deadline_hours),
                        },
                    )
                    await session.execute(
                        _SENDS_OF_JOB,
                        {"ids": [i for i, _ in chunk], "ref": f"job:{job_id}", "now": now},
                    )
                    await session.execute(
                        _TASK,
                        {
                            "tenant": tenant,
                            "key": f"job:{job_id}",
                            "campaign": campaign,
                            "staff": sender,
                            "title": _task_title(kind, len(recipients)),
                            "due": now + timedelta(hours=settings.wecom_deadline_hours),
                        },
                    )
        return len(rows)

    # -- 2. and 3. call and follow up -------------------------------------------------

    async def run_jobs(self) -> int:
        now = clock.now()
        settings = campaigns_settings()
        async with unit_of_work(self.runtime.sessionmaker) as session:
            jobs = (await session.execute(_CLAIM_JOBS, {"now": now, "limit": JOBS_PER_ROUND})).all()
            if jobs:
                await session.execute(
                    _LEASE,
                    {
                        "ids": [j.id for j in jobs],
                        "now": now,
                        "lease": now + timedelta(seconds=settings.wecom_lease_seconds),
                    },
                )
        by_tenant: dict[uuid.UUID, list[Any]] = defaultdict(list)
        for job in jobs:
            by_tenant[job.tenant_id].append(job)
        await asyncio.gather(*(self._tenant_jobs(t, j) for t, j in by_tenant.items()))
        return len(jobs)

    async def _tenant_jobs(self, tenant_id: uuid.UUID, jobs: list[Any]) -> None:
        async with unit_of_work(self.runtime.sessionmaker) as session:
            client = await users.wecom_api_client(
                session, tenant_id, max_retries=0, http=shared_client()
            )
        if client is None:
            for job in jobs:
                await self._store(
                    job, "failed", error="the tenant has no WeCom app secret", unfinished="no_wecom"
                )
            return
        try:
            for job in jobs:
                try:
                    if job.status == "calling":
                        await self._call(client, job)
                    else:
                        await self._follow(client, job)
                except Exception:
                    log.exception("wecom job %s of tenant %s", job.id, tenant_id)
        finally:
            await client.aclose()

    async def _call(self, client: WeComClient, job: Any) -> None:
        now = clock.now()
        settings = campaigns_settings()
        if job.attempts > 0:
            adopted = await self._reconcile(client, job)
            if adopted is not None:
                log.warning(
                    "wecom job %s: adopted %s, created by an earlier attempt", job.id, adopted
                )
                await self._store(
                    job,
                    "created",
                    msgid=adopted,
                    due=now + timedelta(seconds=settings.wecom_check_seconds),
                )
                return
        try:
            if job.kind == "moment":
                msgid = await wecom_api.add_moment_task(client, job.sender, job.text)
                fail_list: list[str] = []
            else:
                created = await wecom_api.add_msg_template(
                    client, job.kind, job.sender, list(job.recipients), job.text
                )
                msgid, fail_list = created.msgid, created.fail_list
        except WeComApiError as exc:
            # WeCom answered: nothing was created. Try again later, or give up.
            if job.attempts + 1 >= settings.max_send_attempts:
                await self._store(job, "failed", error=str(exc), unfinished=f"wecom_{exc.errcode}")
            else:
                delay = min(3600.0, 5.0 * 4**job.attempts)
                await self._store(
                    job, "calling", error=str(exc), due=now + timedelta(seconds=delay)
                )
            return
        # Any other failure leaves the answer unknown: the lease runs out, then step 2.
        await self._store(
            job, "created", msgid=msgid, due=now + timedelta(seconds=settings.wecom_check_seconds)
        )
        if fail_list:
            await self._results(job, {r: "failed" for r in fail_list}, "not_friend")

    async def _reconcile(self, client: WeComClient, job: Any) -> str | None:
        """The msgid of a message an earlier attempt of this job created, if any."""
        if job.kind == "moment" or job.call_started_at is None:
            return None
        start = int(job.call_started_at.timestamp()) - RECONCILE_SLACK_SECONDS
        end = int(clock.now().timestamp()) + RECONCILE_SLACK_SECONDS
        listed = await wecom_api.groupmsg_list(client, job.kind, job.sender, start, end)
        same = [m for m in listed if (m.get("text") or {}).get("content") == job.text]
        if not same:
            return None
        async with unit_of_work(self.runtime.sessionmaker) as session:
            taken = set(
                await session.scalars(
                    _ADOPTED,
                    {"tenant": job.tenant_id, "msgids": [str(m["msgid"]) for m in same]},
                )
            )
        ours = set(job.recipients)
        key = recipient_key(job.kind)
        for message in same:
            msgid = str(message["msgid"])
            if msgid in taken:
                continue
            results = await wecom_api.groupmsg_send_result(client, msgid, job.sender)
            theirs = {str(r.get(key)) for r in results}
            if theirs and theirs <= ours:
                return msgid
        return None

    async def _follow(self, client: WeComClient, job: Any) -> None:
        now = clock.now()
        settings = campaigns_settings()
        assert job.msgid is not None
        reminded = list(job.reminded_at or [])
        if job.kind == "moment":
            answer = await wecom_api.moment_task_result(client, job.msgid)
            if int(answer.get("status", 0)) == 3:
                await self._results(job, dict.fromkeys(job.recipients, "delivered"), None)
                await self._store(job, "done", reminded=reminded)
                await self._task(job, "confirmed")
                return
        else:
            tasks = await wecom_api.groupmsg_task(client, job.msgid)
            sent = any(
                t.get("userid") == job.sender and int(t.get("status", 0)) == 2 for t in tasks
            )
            if sent:
                results = await wecom_api.groupmsg_send_result(client, job.msgid, job.sender)
                key = recipient_key(job.kind)
                outcome: dict[str, str] = {}
                reasons: dict[str, str | None] = {}
                for result in results:
                    status = int(result.get("status", 0))
                    recipient = str(result.get(key))
                    if status == wecom_api.RESULT_SENT:
                        outcome[recipient], reasons[recipient] = "delivered", None
                    elif status == wecom_api.RESULT_NOT_FRIEND:
                        outcome[recipient], reasons[recipient] = "failed", "not_friend"
                    elif status == wecom_api.RESULT_OVER_QUOTA:
                        outcome[recipient], reasons[recipient] = "skipped", "quota"
                await self._results(job, outcome, reasons)
                await self._task(job, "confirmed")
                pending = [r for r in job.recipients if r not in outcome]
                if not pending:
                    await self._store(job, "done", reminded=reminded)
                    return
        if now >= job.deadline_at:
            if job.kind != "moment":
                try:
                    await wecom_api.cancel_groupmsg_send(client, job.msgid)
                except WeComApiError as exc:
                    log.warning("wecom job %s: cancel refused: %s", job.id, exc)
            await self._store(job, "cancelled", reminded=reminded, unfinished="not_confirmed")
            await self._task(job, "overdue")
            return
        if job.kind != "moment" and self._reminder_due(job, reminded, now):
            await wecom_api.remind_groupmsg_send(client, job.msgid)
            reminded.append(now.isoformat())
        await self._store(
            job,
            "created",
            reminded=reminded,
            due=min(now + timedelta(seconds=settings.wecom_check_seconds), job.deadline_at),
        )

    @staticmethod
    def _reminder_due(job: Any, reminded: list[str], now: datetime) -> bool:
        settings = campaigns_settings()
        last_day = [r for r in reminded if datetime.fromisoformat(r) > now - timedelta(days=1)]
        if len(last_day) >= MAX_REMINDERS_A_DAY:
            return False
        since = datetime.fromisoformat(reminded[-1]) if reminded else job.created_at
        return now - since >= timedelta(seconds=settings.wecom_remind_after_seconds)

    # -- storing --------------------------------------------------------------------

    async def _store(
        self,
        job: Any,
        status: str,
        *,
        msgid: str | None = None,
        due: datetime | None = None,
        error: str | None = None,
        reminded: list[str] | None = None,
        unfinished: str | None = None,
    ) -> None:
        now = clock.now()
        async with unit_of_work(self.runtime.sessionmaker) as session:
            await session.execute(
                _JOB,
                {
                    "id": job.id,
                    "status": status,
                    "msgid": msgid,
                    "due": due or now,
                    "error": error,
                    "reminded": json.dumps(
                        reminded if reminded is not None else list(job.reminded_at or [])
                    ),
                    "now": now,
                },
            )
            if unfinished is not None:
                await session.execute(
                    _UNFINISHED,
                    {
                        "tenant": job.tenant_id,
                        "ref": f"job:{job.id}",
                        "reason": unfinished,
                        "now": now,
                    },
                )

    async def _results(
        self, job: Any, outcome: dict[str, str], reasons: dict[str, str | None] | str | None
    ) -> None:
        if not outcome:
            return
        recipients = sorted(outcome)
        async with unit_of_work(self.runtime.sessionmaker) as session:
            await _apply_results(session, job, recipients, outcome, reasons)

    async def _task(self, job: Any, status: str) -> None:
        async with unit_of_work(self.runtime.sessionmaker) as session:
            await session.execute(
                _TASK_STATUS,
                {
                    "tenant": job.tenant_id,
                    "key": f"job:{job.id}",
                    "status": status,
                    "now": clock.now(),
                },
            )


async def _apply_results(
    session: AsyncSession,
    job: Any,
    recipients: list[str],
    outcome: dict[str, str],
    reasons: dict[str, str | None] | str | None,
) -> None:
    def reason_of(r: str) -> str | None:
        if isinstance(reasons, dict):
            return reasons.get(r)
        return reasons

    await session.execute(
        _RESULTS,
        {
            "tenant": job.tenant_id,
            "ref": f"job:{job.id}",
            "key": recipient_key(job.kind) if job.kind != "moment" else "external_userid",
            "recipients": recipients,
            "statuses": [outcome[r] for r in recipients],
            "reasons": [reason_of(r) for r in recipients],
            "now": clock.now(),
        },
    )


def _task_title(kind: str, count: int) -> str:
    if kind == "moment":
        return "Publish the Moments post in WeCom"
    what = "customer groups" if kind == "group" else "customers"
    return f"Send the mass message to {count} {what} in WeCom"
