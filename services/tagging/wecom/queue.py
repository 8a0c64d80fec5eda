"""The WeCom op queue's worker: every tagging worker process runs one (`worker_loop`).

For each tenant with ops due, the corp's call slots are kept busy: ops are claimed
(one short transaction) as slots free up, planned (one more: what each sends),
called outside any transaction, and each answer is stored with its op marked done
in a transaction of its own. After OPS_PER_TURN ops a tenant yields, so that other
tenants' new ops are found. A failed call goes back to pending
with backoff (45033, an unreachable WeCom, a 5xx: anything transient) and, after
`SCRM_TAGGING_WECOM_MAX_ATTEMPTS`, stays as a failed op that ops list
(`GET /v1/wecom/tags/ops?status=failed`) and retry by hand; an error trying again
cannot cure (an unknown tag id, a name WeCom refuses) fails it at once.

At most 5 calls per corp are in flight, across every worker process: claiming
takes the tenant's advisory lock (held until the claim commits), counts the ops
already in flight under a live lease and claims no more than the rest, and each op
stays in flight until its outcome is stored. A worker that dies leaves its ops in
flight until their lease runs out, then they are claimed again (their attempt
counted). Within a process a semaphore per corp holds the same line.

The loop wakes on `NOTIFY scrm_wecom_tags` (sent when ops are queued) and polls
once a second for retries that fall due.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import defaultdict
from datetime import timedelta

from services import users
from services.tagging import clock
from services.tagging.wecom import corp_tags, jobs
from services.tagging.wecom import ops_repository as ops_repo
from services.tagging.wecom.settings import wecom_tag_settings
from services.users.wecom_client import WeComApiError, WeComClient
from shared.db import unit_of_work
from shared.loops import ListeningLoop
from shared.runtime import Runtime

log = logging.getLogger("scrm.tagging.wecom")

# Ops one tenant runs before the queue looks again for other tenants with ops due.
OPS_PER_TURN = 200


def backoff(attempt: int) -> float:
    """Seconds before the next try after failed attempt number `attempt` (1-based)."""
    settings = wecom_tag_settings()
    return float(min(settings.retry_max_seconds, settings.retry_base_seconds * 4 ** (attempt - 1)))


class WeComTagQueue(ListeningLoop):
    channel = ops_repo.NOTIFY_CHANNEL

    def __init__(self, runtime: Runtime, *, idle_poll_seconds: float = 1.0) -> None:
        super().__init__(runtime, idle_poll_seconds=idle_poll_seconds)
        self._semaphores: dict[uuid.UUID, asyncio.Semaphore] = defaultdict(
            lambda: asyncio.Semaphore(wecom_tag_settings().max_concurrent_calls)
        )

    async def step(self) -> int:
        """Run the ops due of every tenant that has some; how many it ran."""
        now = clock.now()
        async with unit_of_work(self.runtime.sessionmaker) as session:
            tenants = await ops_repo.due_tenants(session, now)
        counts = await asyncio.gather(
            *(self.run_tenant(t) for t in tenants), return_exceptions=True
        )
        for tenant_id, count in zip(tenants, counts, strict=True):
            if isinstance(count, BaseException):
                log.error("wecom tag queue: tenant %s round failed", tenant_id, exc_info=count)
        return sum(c for c in counts if isinstance(c, int))

    async def run_tenant(self, tenant_id: uuid.UUID) -> int:
        """Keep the tenant's call slots busy until none of its ops is due: ops are
        claimed, planned and started as slots free up; how many it ran."""
        handled = 0
        running: set[asyncio.Task[None]] = set()
        clients: list[WeComClient | None] = []  # the tenant's client, once loaded
        try:
            while True:
                # A long queue yields its turn now and then: tenants with new ops join.
                ops = await self._claim(tenant_id) if handled < OPS_PER_TURN else []
                handled += len(ops)
                if ops:
                    running |= await self._start(tenant_id, ops, clients)
                if not running:
                    return handled
                finished, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    if task.exception() is not None:
                        log.error(
                            "wecom tag op of tenant %s: its outcome was not stored",
                            tenant_id,
                            exc_info=task.exception(),
                        )
        finally:
            if running:  # cancelled: the calls under way finish (or their lease runs out)
                await asyncio.gather(*running, return_exceptions=True)
            for client in clients:
                if client is not None:
                    await client.aclose()

    async def _claim(self, tenant_id: uuid.UUID) -> list[ops_repo.Op]:
        settings = wecom_tag_settings()
        async with unit_of_work(self.runtime.sessionmaker) as session:
            return await ops_repo.claim(
                session,
                tenant_id,
                clock.now(),
                max_in_flight=settings.max_concurrent_calls,
                lease_seconds=settings.lease_seconds,
            )

    async def _start(
        self, tenant_id: uuid.UUID, ops: list[ops_repo.Op], clients: list[WeComClient | None]
    ) -> set[asyncio.Task[None]]:
        """Plan the claimed ops; finish those with nothing to send, start the calls."""
        by_id = {op.id: op for op in ops}
        try:
            async with unit_of_work(self.runtime.sessionmaker) as session:
                if not clients:
                    clients.append(await users.wecom_api_client(session, tenant_id))
                plans = await jobs.plan(session, tenant_id, ops)
        except Exception as exc:
            log.exception("wecom tag ops of tenant %s could not be planned", tenant_id)
            for op in ops:
                await self._failed(op, f"planning failed: {type(exc).__name__}: {exc}", retry=True)
            return set()
        for op_id, (reason, retry) in plans.failures.items():
            await self._failed(by_id[op_id], reason, retry=retry)
        done = {i: j.result for i, j in plans.jobs.items() if isinstance(j, jobs.Done)}
        if done:
            async with unit_of_work(self.runtime.sessionmaker) as session:
                await ops_repo.finish_many(session, done, clock.now())
        calls = {i: j for i, j in plans.jobs.items() if not isinstance(j, jobs.Done)}
        client = clients[0]
        if client is None:
            for op_id in calls:
                await self._failed(by_id[op_id], "the tenant has no WeCom app secret", retry=True)
            return set()
        slots = self._semaphores[tenant_id]
        return {
            asyncio.create_task(self._run(client, by_id[op_id], job, slots))
            for op_id, job in calls.items()
        }

    async def _run(
        self,
        client: WeComClient,
        op: ops_repo.Op,
        job: jobs.Job,
        slots: asyncio.Semaphore,
    ) -> None:
        try:
            async with slots:
                answer = await job.call(client)
        except jobs.OpFailed as exc:
            await self._failed(op, str(exc), retry=False)
            return
        except WeComApiError as exc:
            await self._failed(op, str(exc), retry=corp_tags.retryable(exc))
            return
        except Exception as exc:  # transport errors, 5xx, anything else: try again later
            await self._failed(op, f"{type(exc).__name__}: {exc}", retry=True)
            return
        try:
            async with unit_of_work(self.runtime.sessionmaker) as session:
                now = clock.now()
                result = await job.apply(session, op.tenant_id, answer, now)
                await ops_repo.finish(session, op.id, result, now)
        except Exception as exc:
            log.exception("wecom tag op %s (%s) answered but not stored", op.id, op.kind)
            await self._failed(op, f"storing the answer failed: {type(exc).__name__}: {exc}", True)

    async def _failed(self, op: ops_repo.Op, error: str, retry: bool) -> None:
        """Back to pending with backoff, or failed for good (no retry, or the last one)."""
        settings = wecom_tag_settings()
        give_up = not retry or op.attempts >= settings.max_attempts
        now = clock.now()
        delay = 0.0 if give_up else backoff(op.attempts)
        async with unit_of_work(self.runtime.sessionmaker) as session:
            await ops_repo.retry_later(
                session,
                op.id,
                error,
                now + timedelta(seconds=delay),
                give_up=give_up,
            )
        if give_up:
            log.error(
                "wecom tag op %s (%s, tenant %s) failed after %d attempts: %s",
                op.id,
                op.kind,
                op.tenant_id,
                op.attempts,
                error,
            )
        else:
            log.warning(
                "wecom tag op %s (%s, tenant %s) attempt %d failed, retry in %.0f s: %s",
                op.id,
                op.kind,
                op.tenant_id,
                op.attempts,
                delay,
                error,
            )
