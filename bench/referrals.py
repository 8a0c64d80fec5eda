"""Referrals at scale: attributed and qualified through the webhook path, rewarded by the
hold expiry job beside a raw INSERT ... SELECT, and the report over them.

    python bench/referrals.py [--referrals 100000] [--inviters 10000] [--batch 1000]
                              [--connections 4] [--arrival interleaved|grouped]
                              [--seed webhook|sql] [--report-runs 5] [--drain-timeout 900]
    python bench/referrals.py --referrals 5000 --inviters 500     a quick run

On the local PostgreSQL and Redis (DATABASE_URL as the admin URL / REDIS_URL, else
postgresql://postgres@127.0.0.1:5432/postgres and redis://127.0.0.1:6379/15), in a
database of its own (created, migrated to head and dropped):

0. Setup: a tenant with a webhook secret, its referral configuration (hold 7 days,
   velocity and daily cap high enough for this traffic, the default tiers and welcome
   coupon), the two tier items in the catalog (stock: one per inviter), `--inviters`
   contacts (set-based) and their invite codes (codes.code_for), made before any
   invitee exists.
1. The webhook path: `scrm serve --service users` (the signed webhook), `scrm worker
   --service users` (applies what was stored; with the outbox relay and the scheduler)
   and `scrm worker --service points --no-dispatch` in subprocesses (the services the
   referral path goes through; tagging and campaigns are not run). `--referrals`
   `referral.registered` events of new contacts (shop_customer_id inv-<n>, distinct
   device ids and IPs, invitee n coming through inviter n mod --inviters, or with
   `--arrival grouped` each inviter's invitees in a row), signed, in requests of
   `--batch` events; once all are attributed (pending), an `order.paid` for each
   invitee; then waits until all are qualified and the report's read model has every
   invitee. Prints the time and rate (informative, no target). The workers are
   stopped before the timed phases (SCRM_WORKER_NICE, SCRM_WORKER_MAX_JOBS,
   SCRM_INBOUND_* are passed on to them). A step not done within `--drain-timeout`
   ends the run (exit 1).
   `--seed sql` replaces this phase by the state it leaves, written set-based (the
   invitees, their qualified referrals with transitions and welcome coupons, the
   report's read model; not the invitees' order points): the job and the report at
   a size the webhook path takes too long for.
2. The hold expiry job, in this process, with the points clock moved past the holds:
   its runs (lifecycle.reward_due, a batch of lifecycle.BATCH, then rewards.pay_owed),
   each a transaction of its own, as the points workers run them: a run over every
   inviter, then tasks.REWARD_PARTS runs at once, each on its partition of the inviters
   and followed by the next while its batches come full, until nothing is due.
   Checks: every referral rewarded, one invite ledger entry each, each tier once per
   inviter (the items' stock taken once each), nothing owed, `scrm points verify`.
3. Baseline, in the same run and database: a raw `INSERT INTO points_ledger ... SELECT`
   of the same invite entries from the rewarded referrals joined to their inviters'
   accounts, in a transaction rolled back. Target: the job <= 3x the raw insert.
   Beside it, every row the job writes (not the tiers) written raw in a few
   statements, rolled back: what merely writing those rows costs.
4. The report over the window from the attributions' day to the job's:
   GET /v1/points/referrals/report through `scrm serve --service points` (an analyst
   key), and reports.referral_report called directly, `--report-runs` each: p50 and
   max. Target: <= 1 s (the slowest run).

The database is VACUUM ANALYZEd before each timed phase (2, 3, 4), as autovacuum would
have after such a load, so plans see the real sizes. Prints a human summary and a
final JSON line; exits 1 when a target is missed or a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import cProfile
import hashlib
import hmac
import json
import os
import pstats
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit
from zoneinfo import ZoneInfo

import asyncpg  # type: ignore[import-untyped]
import httpx
from sqlalchemy import event, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.points import clock  # noqa: E402
from services.points.catalog.schemas import ItemIn  # noqa: E402
from services.points.catalog.service import create_item  # noqa: E402
from services.points.ledger.booking import now as clock_now  # noqa: E402
from services.points.referrals import codes, lifecycle, reports, rewards, tasks  # noqa: E402
from services.points.referrals.config import ReferralConfig, load_config, save_config  # noqa: E402
from services.points.rules.service import load_rules  # noqa: E402
from services.users.schemas import MAX_BATCH  # noqa: E402
from services.users.service import create_webhook_secret  # noqa: E402
from shared import auth, migrate, tenancy  # noqa: E402
from shared.config import Settings, plain_postgres_url  # noqa: E402
from shared.db import unit_of_work  # noqa: E402
from shared.runtime import Runtime  # noqa: E402

RUN = f"{os.getpid()}_{uuid.uuid4().hex[:6]}"
SLUG = "bench-referrals"
SECRET = "r" * 40
HOLD_DAYS = 7
ORDER_FEN = 9900
JOB_TARGET = 3.0  # the job / the raw insert
REPORT_TARGET_S = 1.0
# How the workers run may be set from the environment (other SCRM_* settings are not).
WORKER_KNOBS = (
    "SCRM_WORKER_NICE",
    "SCRM_WORKER_MAX_JOBS",
    "SCRM_INBOUND_BATCH_SIZE",
    "SCRM_INBOUND_CONCURRENCY",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def admin_execute(admin_url: str, *statements: str) -> None:
    conn = await asyncpg.connect(plain_postgres_url(admin_url))
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms"


# ---------------------------------------------------------------- 0. setup
async def setup(
    runtime: Runtime, inviters: int
) -> tuple[uuid.UUID, str, str, list[uuid.UUID], list[str]]:
    """The tenant, its webhook secret and analyst key, its referral configuration and
    tier items, the inviters and their codes (made before any invitee exists)."""
    async with unit_of_work(runtime.sessionmaker) as session:
        tenant = await tenancy.create_tenant(session, SLUG)
        _, secret = await create_webhook_secret(session, runtime.cipher, tenant.id)
        _, key = await auth.create_api_key(
            session, tenant_id=tenant.id, role="analyst", name="bench/referrals.py"
        )
        config = await save_config(
            session,
            tenant.id,
            # The bench's traffic is no fraud: one burst of invites a minute per inviter,
            # all on one day; the dedupe stays on (each invitee has its own device and IP).
            ReferralConfig(hold_days=HOLD_DAYS, velocity_per_minute=100_000, daily_cap=1_000_000),
        )
        for tier in config.tiers:
            if tier.reward.kind == "item":
                assert tier.reward.sku is not None
                await create_item(
                    session,
                    tenant.id,
                    ItemIn(
                        sku=tier.reward.sku,
                        kind="coupon",
                        name=tier.reward.name,
                        coupon_value_fen=2000,
                        stock=inviters,
                    ),
                )
        rows = await session.execute(
            text(
                "INSERT INTO contacts (tenant_id, id)"
                " SELECT :t, gen_random_uuid() FROM generate_series(1, :n) RETURNING id"
            ),
            {"t": tenant.id, "n": inviters},
        )
        ids = sorted(r.id for r in rows)
    made: list[str] = []
    for start in range(0, len(ids), 1000):
        async with unit_of_work(runtime.sessionmaker) as session:
            for contact in ids[start : start + 1000]:
                made.append((await codes.code_for(session, tenant.id, contact))["code"])
    return tenant.id, secret, key, ids, made


# ---------------------------------------------------------------- 1. the webhook path
def inviter_index(n: int, args: argparse.Namespace) -> int:
    """Which inviter invitee n came through: in turn (interleaved, as many inviters'
    invites arrive together), or each inviter's invitees one after another (grouped)."""
    inviters: int = args.inviters
    if args.arrival == "grouped":
        return n * inviters // int(args.referrals)
    return n % inviters


def signed(secret: str, events: list[dict[str, Any]]) -> tuple[bytes, dict[str, str]]:
    """The body and headers of a webhook request as an integration signs it."""
    body = json.dumps({"events": events}).encode()
    timestamp = str(int(time.time()))
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return body, {
        "Content-Type": "application/json",
        "X-Scrm-Timestamp": timestamp,
        "X-Scrm-Signature": f"sha256={mac.hexdigest()}",
    }


def registration(n: int, code: str, at: datetime) -> dict[str, Any]:
    return {
        "event_id": f"reg-{n}",
        "type": "referral.registered",
        "occurred_at": at.isoformat(),
        "contact": {"shop_customer_id": f"inv-{n}"},
        "properties": {
            "code": code,
            "device_id": f"dev-{n}",
            "ip": f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}",
        },
    }


def order(n: int, at: datetime) -> dict[str, Any]:
    return {
        "event_id": f"ord-{n}",
        "type": "order.paid",
        "occurred_at": at.isoformat(),
        "contact": {"shop_customer_id": f"inv-{n}"},
        "properties": {"order_id": f"SO-{n}", "amount_fen": ORDER_FEN},
    }


async def post_events(
    port: int,
    secret: str,
    count: int,
    batch: int,
    connections: int,
    build: Callable[[int], dict[str, Any]],
) -> tuple[float, int]:
    """Post `count` events built by `build`, `batch` a request over `connections`
    concurrent connections, each request signed as it is sent: the seconds it took and
    the events accepted. Any request not accepted in full is an error."""
    starts = list(range(0, count, batch))
    accepted = 0
    url = f"http://127.0.0.1:{port}/v1/webhooks/{SLUG}/events"

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal accepted
        while starts:
            start = starts.pop(0)
            body, headers = signed(
                secret, [build(n) for n in range(start, min(count, start + batch))]
            )
            response = await client.post(url, content=body, headers=headers)
            answer = response.json()
            if response.status_code != 202 or answer["rejected"]:
                raise SystemExit(f"the webhook refused events: {response.status_code} {answer}")
            accepted += answer["accepted"]

    limits = httpx.Limits(max_connections=connections)
    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(connections)))
    return time.perf_counter() - started, accepted


async def wait_for(
    label: str,
    count: Callable[[], Awaitable[int]],
    wanted: int,
    timeout: float,
) -> tuple[float, int]:
    """Poll `count` until it reaches `wanted` (a progress line every 15 s): the seconds
    it took and the last count."""
    started = time.perf_counter()
    shown = started
    while True:
        found = await count()
        now = time.perf_counter()
        if found >= wanted:
            return now - started, found
        if now - started > timeout:
            print(f"     {label}: {found:,} of {wanted:,} after {timeout:.0f} s: gave up")
            return now - started, found
        if now - shown >= 15:
            shown = now
            print(f"     ... {found:,} of {wanted:,} {label} ({now - started:.0f} s)")
        await asyncio.sleep(0.5)


async def scalar(runtime: Runtime, sql: str, **params: Any) -> int:
    async with runtime.engine.connect() as conn:
        return int(await conn.scalar(text(sql), params) or 0)


async def statuses(runtime: Runtime, tenant_id: uuid.UUID) -> dict[str, int]:
    async with runtime.engine.connect() as conn:
        found = await conn.execute(
            text(
                "SELECT status || COALESCE(':' || reason, '') AS s, count(*) AS n"
                " FROM referrals WHERE tenant_id = :t GROUP BY 1 ORDER BY 1"
            ),
            {"t": tenant_id},
        )
        return {r.s: r.n for r in found}


def start_process(env: dict[str, str], log: IO[bytes], *command: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "shared.cli", *command], env=env, stdout=log, stderr=log
    )


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def wait_ready(port: int, process: subprocess.Popen[bytes], seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SystemExit(f"the API exited with code {process.returncode}")
            try:
                if (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise SystemExit(f"the API did not get ready on port {port} within {seconds:.0f} s")


async def webhook_path(
    runtime: Runtime,
    env: dict[str, str],
    log: IO[bytes],
    tenant_id: uuid.UUID,
    secret: str,
    invite_codes: list[str],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Phase 1: attribution and qualification of every invitee through the webhook and
    the users and points workers (subprocesses, stopped at the end)."""
    n = args.referrals
    port = free_port()
    api = start_process({**env, "PORT": str(port)}, log, "serve", "--service", "users")
    processes = [
        api,
        start_process(env, log, "worker", "--service", "users"),
        start_process(env, log, "worker", "--service", "points", "--no-dispatch"),
    ]
    try:
        await wait_ready(port, api)
        print(
            "1. the webhook path: `scrm serve --service users`, `scrm worker --service users`"
            " (relay, scheduler), `scrm worker --service points --no-dispatch`"
        )
        began = time.perf_counter()
        at = datetime.now(UTC)
        sent, accepted = await post_events(
            port,
            secret,
            n,
            args.batch,
            args.connections,
            lambda i: registration(i, invite_codes[inviter_index(i, args)], at),
        )
        print(
            f"   {accepted:,} referral.registered acknowledged in {sent:.1f} s "
            f"({accepted / sent:,.0f} events/s, {args.batch} a request)"
        )

        async def attributed() -> int:
            return await scalar(
                runtime,
                "SELECT count(*) FROM referrals WHERE tenant_id = :t",
                t=tenant_id,
            )

        attribution_s, done = await wait_for("attributed", attributed, n, args.drain_timeout)
        if done < n:
            return unfinished("attribution", done, attribution_s, args)
        attribution_s = time.perf_counter() - began
        found = await statuses(runtime, tenant_id)
        print(
            f"   attributed {n:,} invitees {attribution_s:.1f} s after the first request "
            f"({n / attribution_s:,.0f} referrals/s): {found}"
        )
        began = time.perf_counter()
        paid_at = datetime.now(UTC)
        sent, accepted = await post_events(
            port, secret, n, args.batch, args.connections, lambda i: order(i, paid_at)
        )
        print(
            f"   {accepted:,} order.paid acknowledged in {sent:.1f} s "
            f"({accepted / sent:,.0f} events/s)"
        )

        async def qualified() -> int:
            return await scalar(
                runtime,
                "SELECT count(*) FROM referrals WHERE tenant_id = :t AND status = 'qualified'",
                t=tenant_id,
            )

        qualification_s, done = await wait_for("qualified", qualified, n, args.drain_timeout)
        if done < n:
            return unfinished("qualification", done, qualification_s, args)
        qualification_s = time.perf_counter() - began
        print(
            f"   qualified {n:,} referrals {qualification_s:.1f} s after the first order "
            f"({n / qualification_s:,.0f} referrals/s)"
        )

        # The report's read model (joined, first paid) and the rest of the points
        # worker's backlog: the job and the report run on a settled database.
        async def settled() -> int:
            read_model = await scalar(
                runtime,
                "SELECT count(*) FROM referral_contacts WHERE tenant_id = :t"
                " AND joined_at IS NOT NULL AND first_paid_at IS NOT NULL",
                t=tenant_id,
            )
            unpublished = await scalar(
                runtime, "SELECT count(*) FROM outbox_events WHERE published_at IS NULL"
            )
            queued = int(await runtime.redis.zcard(runtime.queue_name("points")))
            return read_model if unpublished == 0 and queued == 0 else 0

        settling, done = await wait_for("in the read model", settled, n, args.drain_timeout)
        if done < n:
            return unfinished("the report's read model", done, settling, args)
        print(
            f"   the points worker settled (the report's read model complete) "
            f"{settling:.1f} s later"
        )
        return {
            "attribution_s": round(attribution_s, 1),
            "attribution_per_s": round(n / attribution_s),
            "qualification_s": round(qualification_s, 1),
            "qualification_per_s": round(n / qualification_s),
            "settle_s": round(settling, 1),
            "statuses": await statuses(runtime, tenant_id),
            "complete": True,
        }
    finally:
        stop(processes)


def unfinished(step: str, done: int, seconds: float, args: argparse.Namespace) -> dict[str, Any]:
    """Phase 1 did not finish within --drain-timeout: what it got to, and no more phases."""
    print(
        f"   {step} did not finish within --drain-timeout {args.drain_timeout:g} s: "
        f"{done:,} of {args.referrals:,} ({done / seconds:,.0f}/s); the other phases are not "
        "run (a larger --drain-timeout waits longer; --seed sql times the job and the report "
        "without this phase)"
    )
    return {"complete": False, "step": step, "done": done, "seconds": round(seconds, 1)}


# ---------------------------------------------------------------- 1'. or seeded with SQL
SEED = [
    # The invitees, created after the codes (as the users service creates them).
    """
    INSERT INTO contacts (tenant_id, id)
    SELECT CAST(:t AS uuid), CAST(md5(CAST(:run AS text) || '-' || n) AS uuid)
      FROM generate_series(0, CAST(:n AS int) - 1) AS n
    """,
    # Their referrals, qualified, in the order the webhook path attributes them.
    """
    INSERT INTO referrals (tenant_id, invitee_id, inviter_id, code, source, event_key, status,
                           device_hash, ip_hash, attributed_at, qualified_at, hold_until,
                           order_id, order_amount_fen)
    SELECT p.t, CAST(md5(p.run || '-' || s.n) AS uuid), p.inviters[s.i + 1], p.codes[s.i + 1],
           'event', 'seed:' || s.n, 'qualified', md5('device-' || s.n), md5('ip-' || s.n),
           p.attributed, p.paid, p.paid + make_interval(days => p.hold), 'SO-' || s.n, p.amount
      FROM (SELECT CAST(:t AS uuid) AS t, CAST(:run AS text) AS run,
                   CAST(:inviters AS uuid[]) AS inviters, CAST(:codes AS text[]) AS codes,
                   CAST(:attributed AS timestamptz) AS attributed,
                   CAST(:paid AS timestamptz) AS paid, CAST(:hold AS int) AS hold,
                   CAST(:amount AS bigint) AS amount) AS p,
           (SELECT n, CASE WHEN CAST(:grouped AS boolean) THEN n * CAST(:k AS int) / CAST(:n AS int)
                           ELSE n % CAST(:k AS int) END AS i
              FROM generate_series(0, CAST(:n AS int) - 1) AS n) AS s
     ORDER BY s.n
    """,
    """
    INSERT INTO referral_transitions (tenant_id, referral_id, from_status, to_status, cause,
                                      actor, at)
    SELECT tenant_id, id, NULL, 'pending', 'attributed', 'event', attributed_at
      FROM referrals WHERE tenant_id = CAST(:t AS uuid)
    UNION ALL
    SELECT tenant_id, id, 'pending', 'qualified', 'order_paid', 'event', qualified_at
      FROM referrals WHERE tenant_id = CAST(:t AS uuid)
    """,
    """
    INSERT INTO referral_rewards (tenant_id, reward_key, purpose, referral_id, contact_id, kind,
                                  name, points, value_fen, status, created_at, granted_at)
    SELECT tenant_id, 'welcome:' || id, 'welcome', id, invitee_id, 'coupon',
           CAST(:welcome AS text), 0, CAST(:welcome_fen AS bigint), 'granted', attributed_at,
           attributed_at
      FROM referrals WHERE tenant_id = CAST(:t AS uuid)
    """,
    # The report's read model, as the points worker keeps it from the users' events.
    """
    INSERT INTO referral_contacts (tenant_id, contact_id, joined_at, first_paid_at)
    SELECT r.tenant_id, r.invitee_id, c.created_at, r.qualified_at
      FROM referrals r JOIN contacts c ON c.tenant_id = r.tenant_id AND c.id = r.invitee_id
     WHERE r.tenant_id = CAST(:t AS uuid)
    """,
]


async def seeded(
    runtime: Runtime,
    tenant_id: uuid.UUID,
    inviters: list[uuid.UUID],
    invite_codes: list[str],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Phase 1 replaced (--seed sql): the state it leaves for the job and the report,
    written set-based: the invitees, their qualified referrals with the transitions
    and welcome coupons, and the report's read model (not the invitees' order points)."""
    started = time.perf_counter()
    async with unit_of_work(runtime.sessionmaker) as session:
        config = await load_config(session, tenant_id)
        welcome = config.invitee_reward
        assert welcome is not None and welcome.kind == "coupon"
        at = datetime.now(UTC)
        params = {
            "t": tenant_id,
            "run": RUN,
            "n": args.referrals,
            "k": args.inviters,
            "grouped": args.arrival == "grouped",
            "inviters": inviters,
            "codes": invite_codes,
            "attributed": at,
            "paid": at + timedelta(minutes=1),
            "hold": config.hold_days,
            "amount": ORDER_FEN,
            "welcome": welcome.name,
            "welcome_fen": welcome.value_fen,
        }
        for statement in SEED:
            wanted = {k: v for k, v in params.items() if f":{k}" in statement}
            await session.execute(text(statement), wanted)
    seconds = time.perf_counter() - started
    print(
        f"1. seeded with SQL (--seed sql; not the webhook path): {args.referrals:,} invitees "
        f"and their qualified referrals, transitions, welcome coupons and the report's read "
        f"model in {seconds:.1f} s"
    )
    return {"seeded_s": round(seconds, 1), "statuses": await statuses(runtime, tenant_id)}


# ---------------------------------------------------------------- 2. the hold expiry job
async def hold_job(runtime: Runtime, at: datetime, profile: bool = False) -> dict[str, Any]:
    """The job's runs as the points workers run them, each a transaction, at the moved
    clock: a run over every inviter, then (its batch full) one run after another on
    each of tasks.REWARD_PARTS partitions of the inviters at once, while their batches
    come full; then runs over every inviter until nothing is due and nothing owed
    could be paid. With `profile`, prints the statements that took the most time (by
    their first words) and a Python profile."""
    runs: list[tuple[int, int, float]] = []
    statements = 0
    spent: dict[str, float] = collections.defaultdict(float)
    calls: collections.Counter[str] = collections.Counter()
    began_at: dict[int, float] = {}

    def count(_conn: Any, cursor: Any, *_: Any) -> None:
        nonlocal statements
        statements += 1
        began_at[id(cursor)] = time.perf_counter()

    def done(_conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        shape = " ".join(statement.split())[:110]
        spent[shape] += time.perf_counter() - began_at.pop(id(cursor))
        calls[shape] += 1

    async def run(part: int = 0, parts: int = 1) -> int:
        began = time.perf_counter()
        async with unit_of_work(runtime.sessionmaker) as session:
            now = clock_now()
            rewarded = await lifecycle.reward_due(session, now=now, part=part, parts=parts)
            paid = await rewards.pay_owed(session, now)
        runs.append((rewarded, paid, time.perf_counter() - began))
        return rewarded + paid

    async def partition(part: int) -> None:
        while await run(part, tasks.REWARD_PARTS) >= lifecycle.BATCH:
            pass

    # What the job sends the database, against the raw insert's one statement.
    event.listen(runtime.engine.sync_engine, "before_cursor_execute", count)
    event.listen(runtime.engine.sync_engine, "after_cursor_execute", done)
    cpu = os.times()
    profiler = cProfile.Profile() if profile else None
    if profiler is not None:
        profiler.enable()
    started = time.perf_counter()
    with clock.use(lambda: at):
        if await run() >= lifecycle.BATCH:
            await asyncio.gather(*(partition(p) for p in range(tasks.REWARD_PARTS)))
        while await run():
            pass
    seconds = time.perf_counter() - started
    if profiler is not None:
        profiler.disable()
        used = os.times()
        print(
            f"   this process: {used.user - cpu.user + used.system - cpu.system:.2f} s of CPU "
            f"(with the profiler) in {seconds:.2f} s"
        )
        print("   where this process spent its time (by own time):")
        stats = pstats.Stats(profiler).sort_stats(os.environ.get("BENCH_PROFILE_SORT", "tottime"))
        stats.print_stats(int(os.environ.get("BENCH_PROFILE_LINES", "25")))
    event.remove(runtime.engine.sync_engine, "before_cursor_execute", count)
    event.remove(runtime.engine.sync_engine, "after_cursor_execute", done)
    if profile:
        print("   the statements that took the most time (summed over concurrent runs):")
        for shape, total in sorted(spent.items(), key=lambda kv: -kv[1])[:15]:
            print(f"     {total:8.2f} s  {calls[shape]:6,}x  {shape}")
    return {
        "seconds": seconds,
        "statements": statements,
        "rewarded": sum(r[0] for r in runs),
        "owed_paid": sum(r[1] for r in runs),
        "run_s": [r[2] for r in runs],
    }


async def job_checks(
    runtime: Runtime, tenant_id: uuid.UUID, env: dict[str, str], args: argparse.Namespace
) -> list[tuple[str, Any, Any]]:
    """(what, found, expected) after the job."""
    n, inviters = args.referrals, args.inviters
    per = list(collections.Counter(inviter_index(i, args) for i in range(n)).values())
    async with unit_of_work(runtime.sessionmaker) as session:
        config = await load_config(session, tenant_id)
    tiers = {t.count for t in config.tiers}
    expected_tiers = sum(1 for p in per for c in tiers if p >= c)
    items = {t.reward.sku for t in config.tiers if t.reward.kind == "item"}
    reached = {t.reward.sku: sum(1 for p in per if p >= t.count) for t in config.tiers}
    async with runtime.engine.connect() as conn:
        q = await conn.execute(
            text(
                """
                SELECT
                  (SELECT count(*) FROM referrals WHERE tenant_id = :t AND status = 'rewarded')
                    AS rewarded,
                  (SELECT count(*) FROM points_ledger WHERE tenant_id = :t AND rule = 'invite')
                    AS invite_entries,
                  (SELECT count(DISTINCT source_key) FROM points_ledger
                    WHERE tenant_id = :t AND rule = 'invite') AS invite_keys,
                  (SELECT count(*) FROM referral_rewards WHERE tenant_id = :t
                    AND purpose = 'invite' AND status = 'granted') AS invite_rewards,
                  (SELECT count(*) FROM referral_rewards WHERE tenant_id = :t
                    AND purpose = 'tier') AS tier_rewards,
                  (SELECT count(*) FROM (SELECT 1 FROM referral_rewards
                    WHERE tenant_id = :t AND purpose = 'tier'
                    GROUP BY contact_id, tier_count HAVING count(*) > 1) d) AS tier_twice,
                  (SELECT count(*) FROM referral_rewards WHERE tenant_id = :t
                    AND status = 'owed') AS owed,
                  (SELECT count(*) FROM referral_rewards WHERE tenant_id = :t
                    AND purpose = 'welcome' AND status = 'granted') AS welcome,
                  (SELECT count(*) FROM referral_transitions WHERE tenant_id = :t
                    AND to_status = 'rewarded') AS transitions,
                  (SELECT count(*) FROM outbox_events WHERE tenant_id = :t
                    AND type = 'referral.succeeded') AS succeeded_events,
                  (SELECT count(*) FROM dead_letters) AS dead_letters
                """
            ),
            {"t": tenant_id},
        )
        row = q.one()
        found = await conn.execute(
            text("SELECT sku, stock FROM points_items WHERE tenant_id = :t"), {"t": tenant_id}
        )
        stock: dict[str, int | None] = {r.sku: r.stock for r in found}
    checks: list[tuple[str, Any, Any]] = [
        ("referrals rewarded", row.rewarded, n),
        ("invite ledger entries (rule 'invite')", row.invite_entries, n),
        ("  of distinct source keys", row.invite_keys, n),
        ("invite rewards granted", row.invite_rewards, n),
        ("rewarded transitions", row.transitions, n),
        ("referral.succeeded events", row.succeeded_events, n),
        (f"tier rewards (tiers {sorted(tiers)})", row.tier_rewards, expected_tiers),
        ("  paid twice to an inviter", row.tier_twice, 0),
        ("rewards still owed", row.owed, 0),
        ("welcome rewards granted (at attribution)", row.welcome, n),
        ("dead letters", row.dead_letters, 0),
    ]
    for sku in sorted(s for s in items if s is not None):
        checks.append((f"stock left of {sku}", stock.get(sku), inviters - reached[sku]))
    code, verified = await asyncio.to_thread(run_verify, env)
    checks.append((f"scrm points verify --tenant {SLUG}: {verified}", code, 0))
    return checks


def run_verify(env: dict[str, str]) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "shared.cli", "points", "verify", "--tenant", SLUG],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return done.returncode, (done.stdout + done.stderr).strip().replace("\n", "; ")


# ---------------------------------------------------------------- 3. the raw insert
RAW_INSERT = text(
    """
    INSERT INTO points_ledger (tenant_id, account_id, kind, points, balance_after, reason,
                               rule, source_key, expires_at, details, created_at)
    SELECT r.tenant_id, a.id, 'earn', p.points, a.balance + p.points, 'successful invite',
           'invite', 'raw:' || r.id, p.expires,
           jsonb_build_object('referral_id', r.id, 'invitee_id', r.invitee_id::text,
                              'day', p.day, 'base_points', p.points),
           p.at
      FROM (SELECT CAST(:points AS bigint) AS points, CAST(:expires AS timestamptz) AS expires,
                   CAST(:day AS text) AS day, CAST(:at AS timestamptz) AS at) AS p,
           referrals r
      JOIN points_accounts a ON a.tenant_id = r.tenant_id AND a.contact_id = r.inviter_id
     WHERE r.tenant_id = :t AND r.status = 'rewarded'
    """
)


async def raw_insert(runtime: Runtime, tenant_id: uuid.UUID, at: datetime) -> tuple[float, int]:
    """The same invite entries, one INSERT ... SELECT, in a transaction rolled back (so
    the checks and the report see the job's rows only): its seconds and rows."""
    async with unit_of_work(runtime.sessionmaker) as session:
        rules = await load_rules(session, tenant_id)
    points = rules.rules.earning.invite.points
    async with runtime.engine.connect() as conn:
        started = time.perf_counter()
        transaction = await conn.begin()
        done = await conn.execute(
            RAW_INSERT,
            {
                "t": tenant_id,
                "points": points,
                "expires": rules.expires_at(at),
                "day": rules.local_day(at).isoformat(),
                "at": at,
            },
        )
        seconds = time.perf_counter() - started
        await transaction.rollback()
    return seconds, int(done.rowcount)


# Every row the job writes, raw: the same ledger entries, their lots, the balances, the
# referrals' status, their rewards and transitions, and one event each, set-based.
RAW_EVERYTHING = (
    RAW_INSERT.text.replace("INSERT INTO points_ledger", "WITH e AS (INSERT INTO points_ledger")
    + """
    RETURNING id, account_id, points, expires_at, created_at, details
    ), lots AS (
        INSERT INTO points_lots (tenant_id, account_id, entry_id, kind, rule, points, remaining,
                                 earned_at, expires_at)
        SELECT CAST(:t AS uuid), e.account_id, e.id, 'earn', 'invite', e.points, e.points,
               e.created_at, e.expires_at FROM e
    )
    UPDATE points_accounts a
       SET balance = a.balance + s.points, lifetime_earned = a.lifetime_earned + s.points
      FROM (SELECT account_id, sum(points) AS points FROM e GROUP BY account_id) AS s
     WHERE a.id = s.account_id
    """,
    """
    UPDATE referrals SET status = 'qualified', rewarded_at = now()
     WHERE tenant_id = :t AND status = 'rewarded'
    """,
    """
    INSERT INTO referral_rewards (tenant_id, reward_key, purpose, referral_id, contact_id, kind,
                                  name, points, status, created_at, granted_at)
    SELECT tenant_id, 'raw:' || id, 'invite', id, inviter_id, 'points', 'successful invite',
           200, 'granted', now(), now()
      FROM referrals WHERE tenant_id = :t AND status = 'qualified'
    """,
    """
    INSERT INTO referral_transitions (tenant_id, referral_id, from_status, to_status, cause,
                                      details, actor, at)
    SELECT tenant_id, id, 'qualified', 'rewarded', 'hold_ended', '{}', 'job', now()
      FROM referrals WHERE tenant_id = :t AND status = 'qualified'
    """,
    """
    INSERT INTO outbox_events (event_id, tenant_id, type, payload)
    SELECT gen_random_uuid(), tenant_id, 'referral.succeeded',
           jsonb_build_object('referral_id', id, 'inviter_contact_id', inviter_id::text,
                              'invitee_contact_id', invitee_id::text,
                              'occurred_at', now()::text)
      FROM referrals WHERE tenant_id = :t AND status = 'qualified' ORDER BY id
    """,
)


RAW_PARTS = (
    "the entries, their lots and the balances",
    "the referrals' status",
    "their invite rewards",
    "their transitions",
    "their events",
)


async def raw_everything(
    runtime: Runtime, tenant_id: uuid.UUID, at: datetime
) -> tuple[float, list[float]]:
    """Every row the job wrote (not the tier rewards), written again raw in a few
    statements, in a transaction rolled back: its seconds, and each statement's."""
    async with unit_of_work(runtime.sessionmaker) as session:
        rules = await load_rules(session, tenant_id)
    params = {
        "t": tenant_id,
        "points": rules.rules.earning.invite.points,
        "expires": rules.expires_at(at),
        "day": rules.local_day(at).isoformat(),
        "at": at,
    }
    async with runtime.engine.connect() as conn:
        started = time.perf_counter()
        transaction = await conn.begin()
        each: list[float] = []
        for statement in RAW_EVERYTHING:
            wanted = {k: v for k, v in params.items() if f":{k}" in statement}
            began = time.perf_counter()
            await conn.execute(text(statement), wanted)
            each.append(time.perf_counter() - began)
        seconds = time.perf_counter() - started
        await transaction.rollback()
    return seconds, each


# ---------------------------------------------------------------- 4. the report
def summary(values: list[float]) -> tuple[float, float]:
    return statistics.median(values), max(values)


async def report_http(
    env: dict[str, str],
    log: IO[bytes],
    key: str,
    first: date,
    last: date,
    runs: int,
) -> tuple[list[float], dict[str, Any]]:
    port = free_port()
    api = start_process({**env, "PORT": str(port)}, log, "serve", "--service", "points")
    try:
        await wait_ready(port, api)
        times: list[float] = []
        body: dict[str, Any] = {}
        headers = {"Authorization": f"Bearer {key}"}
        params = {"from": first.isoformat(), "to": last.isoformat()}
        url = f"http://127.0.0.1:{port}/v1/points/referrals/report"
        async with httpx.AsyncClient(timeout=60, headers=headers) as client:
            for _ in range(runs):
                started = time.perf_counter()
                response = await client.get(url, params=params)
                times.append(time.perf_counter() - started)
                if response.status_code != 200:
                    raise SystemExit(f"the report failed: {response.status_code} {response.text}")
                body = response.json()
        return times, body
    finally:
        stop([api])


async def report_direct(
    runtime: Runtime, tenant_id: uuid.UUID, first: date, last: date, runs: int
) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        async with unit_of_work(runtime.sessionmaker) as session:
            await reports.referral_report(
                session, tenant_id, first=first, last=last, now=datetime.now(UTC)
            )
        times.append(time.perf_counter() - started)
    return times


def report_checks(body: dict[str, Any], args: argparse.Namespace) -> list[tuple[str, Any, Any]]:
    n = args.referrals
    funnel, k = body["funnel"], body["k_factor"]
    return [
        ("report: invites", funnel["invites"], n),
        ("report: attributed", funnel["attributed"], n),
        ("report: qualified", funnel["qualified"], n),
        ("report: succeeded", funnel["succeeded"], n),
        ("report: refused", funnel["refused"], 0),
        ("report: inviters", k["inviters"], min(args.inviters, n)),
        ("report: new contacts invited (level 1)", body["new_contacts"]["level1"], n),
        ("report: invited contacts who paid", body["paid_conversion"]["invited"]["paid"], n),
    ]


# ---------------------------------------------------------------- main
def print_checks(checks: list[tuple[str, Any, Any]]) -> bool:
    ok = True
    for label, found, wanted in checks:
        good = found == wanted
        ok &= good
        shown = f"{found:,}" if isinstance(found, int) else str(found)
        print(f"     {'ok ' if good else 'BAD'} {label}: {shown} (expected {wanted:,})")
    return ok


async def vacuum(database_url: str) -> float:
    started = time.perf_counter()
    await admin_execute(database_url, "VACUUM ANALYZE", "CHECKPOINT")
    return time.perf_counter() - started


async def main(args: argparse.Namespace) -> int:
    admin_url = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")
    name = f"scrm_bench_referrals_{RUN}"
    parts = urlsplit(admin_url)
    database_url = admin_url.rpartition("/")[0] + "/" + name
    prefix = f"benchref{RUN}"
    settings = Settings(
        database_url=database_url, redis_url=redis_url, queue_prefix=prefix, secret_key=SECRET
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SCRM_") or k in WORKER_KNOBS},
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "SCRM_QUEUE_PREFIX": prefix,
        "SCRM_SECRET_KEY": SECRET,
        "SCRM_LOG_LEVEL": os.environ.get("SCRM_LOG_LEVEL", "WARNING"),
        "PYTHONPATH": str(ROOT),
    }
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"scrm-bench-referrals-{RUN}.log"  # noqa: S108
    log = open(log_path, "wb")  # noqa: SIM115
    runtime: Runtime | None = None
    ok = False
    main_task = asyncio.current_task()
    assert main_task is not None
    # SIGTERM as Ctrl-C: cancel, so the cleanup below runs either way.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    await admin_execute(admin_url, f'CREATE DATABASE "{name}"')
    try:
        runtime = await Runtime.open(settings, database_url, redis_url)
        await migrate.upgrade(runtime.engine)
        started = time.perf_counter()
        tenant_id, secret, key, inviters, invite_codes = await setup(runtime, args.inviters)
        print(
            f"referrals benchmark: {args.referrals:,} referrals of {args.inviters:,} inviters, "
            f"{os.cpu_count()} cores, PostgreSQL at {unquote(parts.hostname or '')}:"
            f"{parts.port or 5432} (database {name})"
        )
        print(
            f"0. setup: tenant, webhook secret, referral config (hold {HOLD_DAYS} days, default "
            f"tiers and welcome coupon), {len(inviters):,} inviters and their codes "
            f"({time.perf_counter() - started:.1f} s)"
        )

        # 1. attribution and qualification through the webhook path (or seeded)
        if args.seed == "sql":
            path = await seeded(runtime, tenant_id, inviters, invite_codes, args)
        else:
            path = await webhook_path(runtime, env, log, tenant_id, secret, invite_codes, args)
        if not path.get("complete", True):
            print(json.dumps({"bench": "referrals", "phase1": path, "ok": False}))
            return 1
        phase_ok = path["statuses"] == {"qualified": args.referrals}
        if not phase_ok:
            print(f"   BAD: referrals by status {path['statuses']} (all should be qualified)")

        # 2. the hold expiry job at the moved clock
        at = await hold_until_max(runtime, tenant_id) + timedelta(minutes=1)
        vacuumed = await vacuum(database_url)
        job = await hold_job(runtime, at, args.profile)
        print(
            f"2. the hold expiry job (lifecycle.reward_due, batches of {lifecycle.BATCH:,}, then "
            f"rewards.pay_owed; a transaction a run, {tasks.REWARD_PARTS} partitions of the "
            f"inviters at once once a batch is full) at the points clock moved to "
            f"{at:%Y-%m-%d %H:%M} UTC, after VACUUM ANALYZE ({vacuumed:.1f} s):"
        )
        print(
            f"     {job['seconds']:8.2f} s   {job['rewarded'] / job['seconds']:,.0f} referrals/s "
            f"({job['rewarded']:,} rewarded in {len(job['run_s'])} runs of "
            f"{', '.join(f'{r:.1f}' for r in job['run_s'])} s; {job['owed_paid']} owed "
            f"rewards paid; {job['statements']:,} statements, "
            f"{job['statements'] / max(1, job['rewarded']):.1f} a referral)"
        )
        checks = await job_checks(runtime, tenant_id, env, args)
        checks_ok = print_checks(checks)

        # 3. the raw insert of the same ledger rows
        vacuumed = await vacuum(database_url)
        raw_s, raw_rows = await raw_insert(runtime, tenant_id, at)
        ratio = job["seconds"] / raw_s
        job_met = ratio <= JOB_TARGET
        print(
            f"3. baseline: a raw INSERT INTO points_ledger ... SELECT of the same invite entries "
            f"(one statement, rolled back), after VACUUM ANALYZE ({vacuumed:.1f} s):"
        )
        print(f"     {raw_s:8.2f} s   {raw_rows:,} rows ({raw_rows / raw_s:,.0f} rows/s)")
        print(
            f"     -> the job {job['seconds']:.2f} s = {ratio:.1f}x the raw insert "
            f"(target <= {JOB_TARGET:g}x): {'OK' if job_met else 'MISSED'}"
        )
        checks_ok &= print_checks([("raw rows", raw_rows, args.referrals)])
        vacuumed = await vacuum(database_url)
        everything_s, each_s = await raw_everything(runtime, tenant_id, at)
        print(
            f"   and every row the job writes (the entries, their lots, the balances, the "
            f"referrals' status, rewards, transitions and events; not the tiers), raw in "
            f"{len(RAW_EVERYTHING)} statements, rolled back, after VACUUM ANALYZE "
            f"({vacuumed:.1f} s):"
        )
        for part, part_s in zip(RAW_PARTS, each_s, strict=True):
            print(f"     {part_s:8.2f} s   {part}")
        print(
            f"     {everything_s:8.2f} s   in all -> the job = "
            f"{job['seconds'] / everything_s:.1f}x these writes; they = "
            f"{everything_s / raw_s:.1f}x the raw ledger insert"
        )

        # 4. the report
        zone = ZoneInfo(await tenant_zone(runtime, tenant_id))
        first = (await attributed_min(runtime, tenant_id)).astimezone(zone).date()
        last = at.astimezone(zone).date()
        vacuumed = await vacuum(database_url)
        http_times, body = await report_http(env, log, key, first, last, args.report_runs)
        direct_times = await report_direct(runtime, tenant_id, first, last, args.report_runs)
        http_p50, http_max = summary(http_times)
        direct_p50, direct_max = summary(direct_times)
        slowest = max(http_max, direct_max)
        report_met = slowest <= REPORT_TARGET_S
        print(
            f"4. the report of {first} to {last} (tenant-local days: the attributions' to the "
            f"job's), {args.report_runs} runs each, after VACUUM ANALYZE ({vacuumed:.1f} s):"
        )
        print(
            f"     GET /v1/points/referrals/report (scrm serve --service points, analyst key): "
            f"p50 {ms(http_p50)}  max {ms(http_max)}"
        )
        print(
            f"     reports.referral_report(session, ...) called directly:                    "
            f"p50 {ms(direct_p50)}  max {ms(direct_max)}"
        )
        print(
            f"     -> the slowest {slowest * 1000:.0f} ms (target <= {REPORT_TARGET_S:g} s): "
            f"{'OK' if report_met else 'MISSED'}"
        )
        report_ok = print_checks(report_checks(body, args))

        all_checks = phase_ok and checks_ok and report_ok
        ok = all_checks and job_met and report_met
        if args.seed == "sql":
            phase = "phase 1 seeded with SQL"
        else:
            phase = (
                f"webhook path {path['attribution_per_s']:,} attributions/s, "
                f"{path['qualification_per_s']:,} qualifications/s"
            )
        print(
            f"summary: {args.referrals:,} referrals; {phase}; the job {job['seconds']:.1f} s = "
            f"{ratio:.1f}x the raw insert ({raw_s:.2f} s): {'OK' if job_met else 'MISSED'}; "
            f"the report at most {slowest * 1000:.0f} ms: {'OK' if report_met else 'MISSED'}; "
            f"checks {'OK' if all_checks else 'FAILED'}"
        )
        print(
            json.dumps(
                {
                    "bench": "referrals",
                    "referrals": args.referrals,
                    "inviters": args.inviters,
                    "arrival": args.arrival,
                    "seed": args.seed,
                    "phase1": path,
                    "job": {
                        **job,
                        "seconds": round(job["seconds"], 3),
                        "run_s": [round(r, 2) for r in job["run_s"]],
                    },
                    "raw_insert_s": round(raw_s, 3),
                    "raw_everything_s": round(everything_s, 3),
                    "raw_everything_parts_s": dict(
                        zip(RAW_PARTS, (round(t, 3) for t in each_s), strict=True)
                    ),
                    "job_over_raw": round(ratio, 2),
                    "job_target": JOB_TARGET,
                    "report_http_ms": {
                        "p50": round(http_p50 * 1000, 1),
                        "max": round(http_max * 1000, 1),
                    },
                    "report_direct_ms": {
                        "p50": round(direct_p50 * 1000, 1),
                        "max": round(direct_max * 1000, 1),
                    },
                    "report_target_ms": REPORT_TARGET_S * 1000,
                    "checks_ok": all_checks,
                    "ok": ok,
                },
                default=str,
            )
        )
        return 0 if ok else 1
    finally:
        log.close()
        if ok:
            log_path.unlink(missing_ok=True)
        else:
            print(f"(the scrm processes' log: {log_path})")
        if runtime is not None:
            keys = [k async for k in runtime.redis.scan_iter(match=f"{prefix}:*")]
            if keys:
                await runtime.redis.delete(*keys)
            await runtime.close()
        await admin_execute(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def hold_until_max(runtime: Runtime, tenant_id: uuid.UUID) -> datetime:
    async with runtime.engine.connect() as conn:
        found = await conn.scalar(
            text("SELECT max(hold_until) FROM referrals WHERE tenant_id = :t"), {"t": tenant_id}
        )
    return found if isinstance(found, datetime) else datetime.now(UTC) + timedelta(days=HOLD_DAYS)


async def attributed_min(runtime: Runtime, tenant_id: uuid.UUID) -> datetime:
    async with runtime.engine.connect() as conn:
        found = await conn.scalar(
            text("SELECT min(attributed_at) FROM referrals WHERE tenant_id = :t"),
            {"t": tenant_id},
        )
    return found if isinstance(found, datetime) else datetime.now(UTC)


async def tenant_zone(runtime: Runtime, tenant_id: uuid.UUID) -> str:
    async with unit_of_work(runtime.sessionmaker) as session:
        return await tenancy.tenant_timezone(session, tenant_id)


def run() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--referrals", type=int, default=100_000)
    parser.add_argument("--inviters", type=int, default=10_000)
    parser.add_argument(
        "--batch", type=int, default=MAX_BATCH, help=f"events a webhook request (<= {MAX_BATCH})"
    )
    parser.add_argument("--connections", type=int, default=4, help="concurrent webhook requests")
    parser.add_argument(
        "--arrival",
        choices=("interleaved", "grouped"),
        default="interleaved",
        help="invitee n's inviter: n mod --inviters, or each inviter's invitees in a row",
    )
    parser.add_argument(
        "--seed",
        choices=("webhook", "sql"),
        default="webhook",
        help="phase 1 through the webhook path, or its result written with SQL "
        "(to time the job and the report at a size the webhook path takes too long for)",
    )
    parser.add_argument("--report-runs", type=int, default=5)
    parser.add_argument(
        "--profile",
        action="store_true",
        help="print the job's slowest statements and a Python profile (its order and length "
        "from BENCH_PROFILE_SORT, BENCH_PROFILE_LINES)",
    )
    parser.add_argument(
        "--drain-timeout", type=float, default=900, help="seconds to wait for each step"
    )
    args = parser.parse_args()
    if not 1 <= args.batch <= MAX_BATCH:
        parser.error(f"--batch must be between 1 and {MAX_BATCH}")
    if not 1 <= args.inviters <= args.referrals:
        parser.error("--inviters must be between 1 and --referrals")
    try:
        import uvloop  # what `scrm worker` and `scrm serve` run on
    except ImportError:
        raise SystemExit(asyncio.run(main(args))) from None
    raise SystemExit(uvloop.run(main(args)))


if __name__ == "__main__":
    run()
