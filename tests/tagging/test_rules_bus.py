"""Tag rules over the real bus: each source event fires a rule exactly once under
duplicate deliveries, workers racing, a replay, and a worker SIGKILLed midway."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import uuid
from datetime import UTC, datetime

from sqlalchemy import text

import services.tagging.tasks  # noqa: F401  (registers the handlers)
from services.tagging.rules import service
from services.tagging.rules.schemas import RuleIn
from shared.db import unit_of_work
from shared.events import publish_many
from shared.relay import DELIVER_JOB
from shared.runtime import Runtime
from tests.clock import wait_until
from tests.helpers import make_tenant
from tests.shared.bus_support import relay_all, work_until_idle
from tests.tagging.test_rules_support import make_group, make_tag


async def _brand_with_rule(runtime: Runtime) -> tuple[uuid.UUID, int, int]:
    """A tenant whose rule raises a tag by 1 on every share: a contact's weight is the
    number of times it fired for them."""
    async with unit_of_work(runtime.sessionmaker) as session:
        tenant = (await make_tenant(session)).id
        tag = await make_tag(session, tenant, await make_group(session, tenant))
        rule = await service.create_rule(
            session,
            tenant,
            RuleIn.model_validate(
                {
                    "name": "each share",
                    "event_type": "share",
                    "weight": 1,
                    "target": {"tag_id": tag},
                }
            ),
        )
    return tenant, tag, rule


async def _publish_shares(
    runtime: Runtime, tenant: uuid.UUID, contacts: list[uuid.UUID], per_contact: int
) -> None:
    at = datetime.now(UTC).isoformat()
    async with unit_of_work(runtime.sessionmaker) as session:
        await publish_many(
            session,
            [
                (
                    "share",
                    {
                        "contact_id": str(contact),
                        "event_id": uuid.uuid4().hex,
                        "occurred_at": at,
                        "properties": {},
                        "source": "event",
                    },
                    tenant,
                )
                for _ in range(per_contact)
                for contact in contacts
            ],
        )


async def _exactly_once(runtime: Runtime, tenant: uuid.UUID, tag: int, rule: int) -> int:
    """Every share fired the rule once: one firing per source event, one history row
    per firing, each contact's weight its number of shares. Returns the firings."""
    async with runtime.engine.connect() as conn:
        shares = set(
            (
                await conn.execute(
                    text(
                        "SELECT event_id FROM outbox_events WHERE type = 'share' AND tenant_id = :t"
                    ),
                    {"t": tenant},
                )
            ).scalars()
        )
        fired = list(
            (
                await conn.execute(
                    text(
                        "SELECT source_event_id FROM tag_rule_firings"
                        " WHERE rule_id = :r AND outcome = 'fired'"
                    ),
                    {"r": rule},
                )
            ).scalars()
        )
        assert sorted(fired) == sorted(shares), "one firing per source event"
        history = list(
            (
                await conn.execute(
                    text(
                        "SELECT cause ->> 'source_event_id' FROM contact_tag_history"
                        " WHERE tenant_id = :t AND tag_id = :g AND cause ->> 'rule_id' = :r"
                    ),
                    {"t": tenant, "g": tag, "r": str(rule)},
                )
            ).scalars()
        )
        assert sorted(history) == sorted(str(s) for s in shares), "one tag write per firing"
        weights = dict(
            (
                await conn.execute(
                    text(
                        "SELECT contact_id, weight FROM contact_tags"
                        " WHERE tenant_id = :t AND tag_id = :g"
                    ),
                    {"t": tenant, "g": tag},
                )
            ).all()
        )
        per_contact = await conn.execute(
            text(
                "SELECT payload ->> 'contact_id', count(*) FROM outbox_events"
                " WHERE type = 'share' AND tenant_id = :t GROUP BY 1"
            ),
            {"t": tenant},
        )
        assert {uuid.UUID(c): float(n) for c, n in per_contact} == weights
    return len(fired)


async def test_duplicate_deliveries_racing_workers_and_a_replay_fire_once(
    committed: Runtime,
) -> None:
    tenant, tag, rule = await _brand_with_rule(committed)
    contacts = [uuid.uuid4() for _ in range(6)]
    await _publish_shares(committed, tenant, contacts, 10)
    await relay_all(committed)
    async with committed.engine.connect() as conn:
        ids = list((await conn.execute(text("SELECT id FROM outbox_events ORDER BY id"))).scalars())
    # The same events delivered again, in other jobs, worked by two workers at once.
    queue = committed.queue_name("tagging")
    await committed.redis.enqueue_job(DELIVER_JOB, ids, _queue_name=queue)
    await committed.redis.enqueue_job(DELIVER_JOB, list(reversed(ids)), _queue_name=queue)
    await asyncio.gather(
        work_until_idle(committed, "tagging"), work_until_idle(committed, "tagging")
    )
    assert await _exactly_once(committed, tenant, tag, rule) == 60

    # A replay (as from the dead-letter queue) with the bus's record of it gone.
    async with unit_of_work(committed.sessionmaker) as session:
        await session.execute(
            text("DELETE FROM processed_events WHERE handler = 'tagging.apply_events'")
        )
    await committed.redis.enqueue_job(DELIVER_JOB, ids, _queue_name=queue)
    await work_until_idle(committed, "tagging")
    assert await _exactly_once(committed, tenant, tag, rule) == 60


async def test_a_worker_killed_midway_fires_each_event_once(
    committed: Runtime, scrm_env: dict[str, str]
) -> None:
    """A real `scrm worker --service tagging` is SIGKILLed with batches in flight; a new
    one finishes them, and no share fired its rule twice or not at all."""
    tenant, tag, rule = await _brand_with_rule(committed)
    contacts = [uuid.uuid4() for _ in range(25)]
    env = {**scrm_env, "SCRM_JOB_TIMEOUT_SECONDS": "6"}
    command = [sys.executable, "-m", "shared.cli", "worker", "--service", "tagging"]

    async def fired() -> int:
        async with committed.engine.connect() as conn:
            return int(
                await conn.scalar(
                    text("SELECT count(*) FROM tag_rule_firings WHERE rule_id = :r"), {"r": rule}
                )
            )

    first = subprocess.Popen(command, env=env)
    try:
        for _ in range(10):  # 10 commits of 100 shares, while the worker applies them
            await _publish_shares(committed, tenant, contacts, 4)

        async def started() -> bool:
            return await fired() > 0

        await wait_until(started, "the first worker firing rules", seconds=60, every=0.02)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    done_by_first = await fired()
    for _ in range(5):  # more while no worker runs
        await _publish_shares(committed, tenant, contacts, 4)
    total = 1500
    assert done_by_first < total
    second = subprocess.Popen(command, env=env)
    try:

        async def all_fired() -> bool:
            return await fired() >= total

        await wait_until(all_fired, f"{total} firings", seconds=120, every=0.1)

        async def queue_empty() -> bool:
            return await committed.redis.zcard(committed.queue_name("tagging")) == 0

        await wait_until(queue_empty, "the tagging queue worked off", seconds=120, every=0.05)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=60)
    assert await _exactly_once(committed, tenant, tag, rule) == total
