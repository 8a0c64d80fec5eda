"""Segments at scale: a full build beside hand-written SQL, previews and explanations,
and membership following a stream of webhook events.

    python bench/segments.py [--contacts 1000000] [--tags-per-contact 10]
                             [--event-rows-per-contact 8] [--explains 50]
                             [--stream-seconds 20] [--rate 1000] [--skip-stream]

On the local PostgreSQL (DATABASE_URL as the admin URL, else
postgresql://postgres@127.0.0.1:5432/postgres) in a database of its own:

0. Data, generated set-based with generate_series: `--contacts` live profiles
   (lifecycle stages, owners, ages), `--tags-per-contact` tags each among 100
   (weights 1-30, half of them decaying with a 30-day half-life), and
   `--event-rows-per-contact` tagging_event_days rows each (order.paid and
   page.view on distinct days of the last year, 1-4 events a row: 2.5 on
   average, so 1,000,000 contacts x 8 rows aggregate 20,000,000 events), 10% of
   the contacts in customer group g1. VACUUM ANALYZE.
1. (a) The full build of a 4-leaf segment (tag weight >= 10, >= 2 order.paid in 30
   days, lifecycle active or new, not in group g1): services.tagging.segments
   build (members and their segment.entered events, one statement), then a
   rebuild with nothing to change, and beside them a hand-written
   `INSERT INTO segment_members ... SELECT` of the same rule (members only, no
   events; with the build's work_mem and no JIT) for a second segment, in the same
   run. Target: <= 10 s and <= 1.5x
   the hand-written SQL.
2. (c) Preview (exact count + 20 contacts) of the same rule, and explain for
   `--explains` random contacts (p50/p95). Targets: preview <= 2 s, explain
   <= 50 ms. Peak memory of this process (which ran the builds as the tagging
   worker does) is printed.
3. (b) Unless --skip-stream: `scrm up` on another database; signed webhook
   requests of 50 order.paid events for new contacts at `--rate` events/s for
   `--stream-seconds` (after `--warmup-requests` not measured, and ANALYZE), against
   a segment "order.paid in the last 30 days"; the
   delay from each request's acknowledgement to the moment its contacts'
   segment.entered is committed (seen through LISTEN on the outbox channel),
   p50/p95/p99, the p50 by fifth of the stream (a growing backlog shows), where the
   delay goes (users batch, relay, tagging batch: from the rows' timestamps), and
   the peak memory (VmHWM) of the scrm processes.

Prints a human summary and a final JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import random
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.tagging.segments import service  # noqa: E402
from services.tagging.segments.settings import segment_settings  # noqa: E402
from shared import migrate, tenancy  # noqa: E402
from shared.config import plain_postgres_url  # noqa: E402
from shared.db import create_engine, unit_of_work  # noqa: E402
from shared.events import NOTIFY_CHANNEL  # noqa: E402

RUN = f"{os.getpid()}_{uuid.uuid4().hex[:6]}"
SLUG = "bench-segments"
TAGS = 100
RULE_TAG_INDEX = 7


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms"


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def admin_execute(admin_url: str, *statements: str) -> None:
    conn = await asyncpg.connect(plain_postgres_url(admin_url))
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def rule(tag_id: int) -> dict[str, Any]:
    return {
        "all": [
            {"tag": tag_id, "min_weight": 10},
            {"event": "order.paid", "count": {"gte": 2}, "within_days": 30},
            {"field": "lifecycle_stage", "in": ["active", "new"]},
            {"not": {"in_group": "g1"}},
        ]
    }


HAND_WRITTEN = """
INSERT INTO segment_members (segment_id, contact_id, tenant_id, entered_at)
SELECT $1, p.contact_id, p.tenant_id, now()
  FROM tagging_profiles p
 WHERE p.tenant_id = $2 AND p.status = 'live'
   AND p.lifecycle_stage IN ('active', 'new')
   AND EXISTS (SELECT 1 FROM contact_tags ct
                WHERE ct.tenant_id = p.tenant_id AND ct.contact_id = p.contact_id
                  AND ct.tag_id = $3
                  AND tag_weight(ct.weight, ct.weighted_at, ct.half_life_days, now()) >= 10)
   AND p.contact_id IN (SELECT d.contact_id FROM tagging_event_days d
                         WHERE d.tenant_id = $2 AND d.event_type = 'order.paid'
                           AND d.day >= $4
                         GROUP BY d.contact_id HAVING sum(d.n) >= 2)
   AND NOT EXISTS (SELECT 1 FROM tagging_group_members g
                    WHERE g.tenant_id = p.tenant_id AND g.chat_id = 'g1'
                      AND g.contact_id = p.contact_id)
"""


async def generate(conn: Any, tenant_id: uuid.UUID, args: argparse.Namespace) -> list[int]:
    """The read model, set-based; returns the tag ids."""
    n = args.contacts
    await conn.execute("SELECT setseed(0.42)")
    group = await conn.fetchval(
        "INSERT INTO tag_groups (tenant_id, name, kind, half_life_days) "
        "VALUES ($1, 'interest', 'interest', 30) RETURNING id",
        tenant_id,
    )
    tag_ids = [
        r[0]
        for r in await conn.fetch(
            "INSERT INTO tags (tenant_id, group_id, name) "
            "SELECT $1, $2, 'tag-' || g FROM generate_series(1, $3) g RETURNING id",
            tenant_id,
            group,
            TAGS,
        )
    ]
    contact = "('00000000-0000-4000-8000-' || lpad(to_hex(i), 12, '0'))::uuid"
    started = time.perf_counter()
    await conn.execute(
        f"""
        INSERT INTO tagging_profiles (tenant_id, contact_id, created_at, owner_staff,
                                      lifecycle_stage, channel)
        SELECT $1, {contact}, now() - random() * interval '700 days', 'staff' || (i % 50),
               (ARRAY['potential','new','active','silent','churned'])[1 + (i % 5)],
               'ch' || (i % 7)
          FROM generate_series(1, $2) i
        """,
        tenant_id,
        n,
    )
    await conn.execute(
        f"""
        INSERT INTO contact_tags (tenant_id, contact_id, tag_id, weight, weighted_at,
                                  half_life_days, source, first_raised_at, last_raised_at)
        SELECT $1, {contact}, ($2::bigint[])[1 + ((i * 7 + k * 13) % 100)],
               1 + floor(random() * 30), now() - random() * interval '60 days',
               CASE WHEN k % 2 = 0 THEN 30.0 END, 'rule', now(), now()
          FROM generate_series(1, $3) i, generate_series(0, $4 - 1) k
        """,
        tenant_id,
        tag_ids,
        n,
        args.tags_per_contact,
    )
    await conn.execute(
        f"""
        INSERT INTO tagging_event_days (tenant_id, contact_id, event_type, day, n)
        SELECT $1, {contact},
               CASE WHEN k < 2 THEN 'order.paid' ELSE 'page.view' END,
               current_date - CASE WHEN k < 2 THEN (i * 31 + k * 11) % 90
                                   ELSE (i * 31 + k * 47) % 365 END,
               1 + floor(random() * 4)
          FROM generate_series(1, $2) i, generate_series(0, $3 - 1) k
        ON CONFLICT DO NOTHING
        """,
        tenant_id,
        n,
        args.event_rows_per_contact,
    )
    await conn.execute(
        f"""
        INSERT INTO tagging_group_members (tenant_id, chat_id, contact_id)
        SELECT $1, 'g1', {contact} FROM generate_series(1, $2) i WHERE i % 10 = 3
        """,
        tenant_id,
        n,
    )
    await conn.execute("VACUUM ANALYZE")
    counts = await conn.fetchrow(
        "SELECT (SELECT count(*) FROM tagging_profiles) profiles,"
        " (SELECT count(*) FROM contact_tags) tags,"
        " (SELECT count(*) FROM tagging_event_days) day_rows,"
        " (SELECT sum(n) FROM tagging_event_days) events"
    )
    print(
        f"data: {counts['profiles']:,} profiles, {counts['tags']:,} contact tags, "
        f"{counts['day_rows']:,} event-day rows aggregating {counts['events']:,} events "
        f"({time.perf_counter() - started:.0f} s to generate)"
    )
    return tag_ids


async def build_and_read(database_url: str, args: argparse.Namespace) -> dict[str, Any]:
    engine = create_engine(database_url, pool_size=4)
    await migrate.upgrade(engine)
    from sqlalchemy.ext.asyncio import async_sessionmaker

    sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
    async with unit_of_work(sessionmaker) as session:
        tenant = await tenancy.create_tenant(session, SLUG)
    conn = await asyncpg.connect(plain_postgres_url(database_url))
    try:
        tag_ids = await generate(conn, tenant.id, args)
    finally:
        await conn.close()
    tag = tag_ids[RULE_TAG_INDEX]
    now = datetime.now(UTC)
    os.environ["SCRM_TAGGING_SEGMENTS_INLINE_BUILD_CONTACTS"] = "0"
    segment_settings.cache_clear()
    async with unit_of_work(sessionmaker) as session:
        segment = await service.create_segment(session, tenant.id, "bench", rule(tag), None, now)
        assert segment.status == "building"
    # Both the build and the hand-written SQL run on a warm cache: one preview first.
    async with unit_of_work(sessionmaker) as session:
        await service.preview(session, tenant.id, rule(tag), None, now)
    started = time.perf_counter()
    async with unit_of_work(sessionmaker) as session:
        built = await service.build(session, segment.id, now)
    build_seconds = time.perf_counter() - started
    started = time.perf_counter()
    async with unit_of_work(sessionmaker) as session:
        again = await service.build(session, segment.id, now)
    rebuild_seconds = time.perf_counter() - started

    async with unit_of_work(sessionmaker) as session:
        other = await service.create_segment(
            session, tenant.id, "hand-written", rule(tag), None, now
        )
    conn = await asyncpg.connect(plain_postgres_url(database_url))
    try:
        tz_day = await conn.fetchval("SELECT (now() AT TIME ZONE 'Asia/Shanghai')::date - 29")
        # With the settings the build itself runs with (its work_mem, no JIT).
        await conn.execute("BEGIN")
        await conn.execute(
            "SELECT set_config('work_mem', $1, true), set_config('jit', 'off', true)",
            segment_settings().evaluation_work_mem,
        )
        started = time.perf_counter()
        status = await conn.execute(HAND_WRITTEN, other.id, tenant.id, tag, tz_day)
        await conn.execute("COMMIT")
        hand_seconds = time.perf_counter() - started
    finally:
        await conn.close()
    hand_members = int(status.split()[-1])

    async with unit_of_work(sessionmaker) as session:
        started = time.perf_counter()
        previewed = await service.preview(session, tenant.id, rule(tag), None, now)
        preview_seconds = time.perf_counter() - started
    rng = random.Random(5)
    picks = [
        uuid.UUID(f"00000000-0000-4000-8000-{rng.randint(1, args.contacts):012x}")
        for _ in range(args.explains)
    ]
    explain_times = []
    members_explained = 0
    for contact in picks:
        started = time.perf_counter()
        async with unit_of_work(sessionmaker) as session:
            answer = await service.explain(session, tenant.id, segment.id, contact, now)
        explain_times.append(time.perf_counter() - started)
        members_explained += answer["member"] == answer["listed"]
    await engine.dispose()
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    members = built["segment.entered"]
    ratio = build_seconds / hand_seconds if hand_seconds else float("nan")
    print(f"(a) full build of a 4-leaf segment over {args.contacts:,} contacts")
    print(
        f"  scrm build (members + segment.entered, one statement) {ms(build_seconds)}"
        f"  {members:,} members entered"
    )
    print(
        f"  scrm rebuild with nothing to change                   {ms(rebuild_seconds)}"
        f"  {again['segment.entered']} entered, {again['segment.left']} left"
    )
    print(
        f"  hand-written INSERT ... SELECT (members only)          {ms(hand_seconds)}"
        f"  {hand_members:,} members"
    )
    print(f"    -> {ratio:.2f}x the hand-written SQL (target <= 1.5x, <= 10 s)")
    print("(c) reads")
    print(
        f"  preview: count {previewed['count']:,} + 20 contacts          {ms(preview_seconds)}"
        "  (target <= 2 s)"
    )
    print(
        f"  explain x{len(explain_times)}: p50 {ms(statistics.median(explain_times))}  "
        f"p95 {ms(quantile(explain_times, 0.95))}  (target <= 50 ms; "
        f"{members_explained}/{len(picks)} agree with the members)"
    )
    print(f"  peak memory of this process (the builds ran here): {peak_kb / 1024:.0f} MiB")
    return {
        "contacts": args.contacts,
        "members": members,
        "build_s": round(build_seconds, 3),
        "rebuild_s": round(rebuild_seconds, 3),
        "hand_written_s": round(hand_seconds, 3),
        "hand_written_members": hand_members,
        "ratio": round(ratio, 3),
        "preview_s": round(preview_seconds, 3),
        "preview_count": previewed["count"],
        "explain_p50_ms": round(statistics.median(explain_times) * 1000, 2),
        "explain_p95_ms": round(quantile(explain_times, 0.95) * 1000, 2),
        "peak_rss_mib": round(peak_kb / 1024),
        "explain_agree": members_explained == len(picks),
    }


# -- (b) the stream ------------------------------------------------------------------------


def scrm(env: dict[str, str], *command: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "shared.cli", *command],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]


async def wait_ready(port: int, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            try:
                if (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise SystemExit(f"nothing answered on port {port}")


def peak_memory(pid: int) -> dict[int, int]:
    """VmHWM (kB) of a process and its descendants."""
    found: dict[int, int] = {}
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                found[current] = int(line.split()[1])
        pending += [int(c) for c in children]
    return found


async def stream(admin_url: str, redis_url: str, args: argparse.Namespace) -> dict[str, Any]:
    name = f"scrm_bench_segstream_{RUN}"
    await admin_execute(admin_url, f'CREATE DATABASE "{name}"')
    database_url = admin_url.rpartition("/")[0] + "/" + name
    port = free_port()
    env = {
        # How the workers run may be set from the environment (other SCRM_* settings not).
        **{
            k: v
            for k, v in os.environ.items()
            if not k.startswith("SCRM_") or k.startswith(("SCRM_WORKER_", "SCRM_INBOUND_"))
        },
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "SCRM_QUEUE_PREFIX": f"benchseg{RUN}",
        "SCRM_SECRET_KEY": "s" * 40,
        "PORT": str(port),
        "PYTHONPATH": str(ROOT),
    }
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"scrm-bench-segments-{RUN}.log"  # noqa: S108
    log = open(log_path, "wb")  # noqa: SIM115
    up: subprocess.Popen[bytes] | None = None
    try:
        scrm(env, "migrate")
        scrm(env, "tenant", "create", SLUG)
        secret = scrm(env, "webhook-secret", "create", "--tenant", SLUG)
        conn = await asyncpg.connect(plain_postgres_url(database_url))
        tenant_id = await conn.fetchval("SELECT id FROM tenants WHERE slug = $1", SLUG)
        segment_id = await conn.fetchval(
            "INSERT INTO segments (tenant_id, name, kind, rule, status, reads, timed) "
            "VALUES ($1, 'recent buyers', 'dynamic', $2::jsonb, 'ready', "
            "ARRAY['event:order.paid', 'field:created_at'], true) RETURNING id",
            tenant_id,
            json.dumps({"event": "order.paid", "within_days": 30}),
        )
        up = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", "up"], env=env, stdout=log, stderr=log
        )
        await wait_ready(port)
        await asyncio.sleep(3)

        seen: dict[str, float] = {}
        last_id = [0]
        listener = await asyncpg.connect(plain_postgres_url(database_url))
        woken = asyncio.Event()
        await listener.add_listener(NOTIFY_CHANNEL, lambda *_: woken.set())

        async def watch(stop: asyncio.Event) -> None:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), timeout=0.5)
                woken.clear()
                rows = await conn.fetch(
                    "SELECT id, payload->>'contact_id' c FROM outbox_events "
                    "WHERE id > $1 AND type = 'segment.entered' ORDER BY id",
                    last_id[0],
                )
                moment = time.time()  # wall clock: compared with the database's now()
                for row in rows:
                    seen.setdefault(row["c"], moment)
                    last_id[0] = max(last_id[0], row["id"])

        batch = 50
        requests = int(args.rate * args.stream_seconds / batch)
        interval = batch / args.rate
        acked: dict[int, float] = {}
        stop = asyncio.Event()
        watcher = asyncio.create_task(watch(stop))
        occurred = datetime.now(UTC).isoformat()

        async def send(client: httpx.AsyncClient, r: int) -> None:
            events = [
                {
                    "event_id": f"bench{r}-{k}",
                    "type": "order.paid",
                    "occurred_at": occurred,
                    "contact": {"external_userid": f"wmSeg{r}x{k}"},
                    "properties": {"order_id": f"SO{r}-{k}", "amount_fen": 100},
                }
                for k in range(batch)
            ]
            body = json.dumps({"events": events}).encode()
            # Signed as it is sent: a slow warm-up must not age the signatures.
            timestamp = str(int(time.time()))
            mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
            response = await client.post(
                f"http://127.0.0.1:{port}/v1/webhooks/{SLUG}/events",
                content=body,
                headers={
                    "Content-Type": "application/json",
                    "X-Scrm-Timestamp": timestamp,
                    "X-Scrm-Signature": f"sha256={mac.hexdigest()}",
                },
            )
            if response.status_code < 300:
                acked[r] = time.time()

        # A tenant with a history: a warm-up (not measured) fills the tables, then they
        # are analyzed as autovacuum would have, so plans see their real sizes.
        async with httpx.AsyncClient(timeout=30) as client:
            await asyncio.gather(*(send(client, -1 - w) for w in range(args.warmup_requests)))
        warm_deadline = time.monotonic() + args.drain_timeout
        while len(seen) < args.warmup_requests * batch and time.monotonic() < warm_deadline:
            await asyncio.sleep(0.5)
        analyzer = await asyncpg.connect(plain_postgres_url(database_url))
        await analyzer.execute("ANALYZE")
        await analyzer.close()
        acked.clear()
        started = time.monotonic()
        async with httpx.AsyncClient(timeout=30) as client:
            tasks = []
            for r in range(requests):
                delay = started + r * interval - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(send(client, r)))
            await asyncio.gather(*tasks)
        sent_seconds = time.monotonic() - started
        deadline = time.monotonic() + args.drain_timeout
        wanted = (len(acked) + args.warmup_requests) * batch
        while len(seen) < wanted and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        stop.set()
        await watcher
        orders = await conn.fetch(
            "SELECT contact_id::text c, properties->>'order_id' o FROM tagging_events "
            "WHERE event_type = 'order.paid'"
        )
        delays = []
        by_request: dict[int, list[float]] = {}
        for row in orders:
            r = int(row["o"][2:].rsplit("-", 1)[0])
            if row["c"] in seen and r in acked:
                delays.append(seen[row["c"]] - acked[r])
                by_request.setdefault(r, []).append(delays[-1])
        # Whether a backlog builds up: the delays of the stream's first, middle and last
        # fifths (a pipeline that keeps up has the same delay throughout).
        fifths = []
        for k in range(5):
            part = [
                d
                for r, ds in by_request.items()
                if k * requests // 5 <= r < (k + 1) * requests // 5
                for d in ds
            ]
            fifths.append(quantile(part, 0.5) if part else float("nan"))
        # The tagging part alone: from the users service's order.paid (its transaction's
        # start) to segment.entered (the tagging batch's), both on the database's clock.
        split = await conn.fetch(
            "SELECT extract(epoch FROM e.created_at - o.created_at) s FROM outbox_events e "
            "JOIN outbox_events o ON o.type = 'order.paid' "
            "AND o.payload->>'contact_id' = e.payload->>'contact_id' "
            "WHERE e.type = 'segment.entered'"
        )
        tagging = [float(r["s"]) for r in split]
        # Where the delay goes, per order.paid (each stage ends at the next one's start):
        # acknowledged -> the users batch that applied it began -> the relay's batch that
        # published order.paid began -> the tagging batch that applied it began -> its
        # segment.entered was seen committed.
        staged = await conn.fetch(
            "SELECT e.payload->>'contact_id' c, o.properties->>'order_id' r, "
            "extract(epoch FROM e.created_at) users, extract(epoch FROM e.published_at) relay, "
            "extract(epoch FROM p.processed_at) tagging "
            "FROM outbox_events e JOIN tagging_events o ON o.contact_id::text = "
            "e.payload->>'contact_id' AND o.event_type = 'order.paid' "
            "JOIN processed_events p ON p.event_id = e.id AND p.handler = 'tagging.apply_events' "
            "WHERE e.type = 'order.paid'"
        )
        stages: dict[str, list[float]] = {
            "ack -> users batch": [],
            "users batch -> relay": [],
            "relay -> tagging batch": [],
            "tagging batch -> segment.entered": [],
        }
        for row in staged:
            r = int(row["r"][2:].rsplit("-", 1)[0])
            if r not in acked or row["c"] not in seen:
                continue
            points = [acked[r], float(row["users"]), float(row["relay"]), float(row["tagging"])]
            points.append(seen[row["c"]])
            for key, start, end in zip(stages, points, points[1:], strict=False):
                stages[key].append(end - start)
        memory = peak_memory(up.pid)
        members = await conn.fetchval(
            "SELECT count(*) FROM segment_members WHERE segment_id = $1", segment_id
        )
        await listener.close()
        await conn.close()
        print(
            f"(b) stream: {len(acked) * batch:,} order.paid events for new contacts in "
            f"{sent_seconds:.1f} s ({len(acked) * batch / sent_seconds:.0f} events/s offered, "
            f"{len(acked)}/{requests} requests acknowledged)"
        )
        print(f"  segment.entered committed for {len(seen):,} contacts, {members:,} members")
        if delays:
            print(
                f"  ack -> segment.entered: p50 {ms(quantile(delays, 0.5))}  "
                f"p95 {ms(quantile(delays, 0.95))}  p99 {ms(quantile(delays, 0.99))}"
                "  (target p95 <= 1 s)"
            )
        if delays:
            print(
                "  p50 by fifth of the stream: "
                + ", ".join(ms(f).strip() for f in fifths)
                + "  (the same throughout when the pipeline keeps up)"
            )
        if tagging:
            print(
                f"  of which order.paid published -> segment.entered: "
                f"p50 {ms(quantile(tagging, 0.5))}  p95 {ms(quantile(tagging, 0.95))}"
            )
        for key, values in stages.items():
            if values:
                print(
                    f"  {key:>34}: p50 {ms(quantile(values, 0.5))}  "
                    f"p95 {ms(quantile(values, 0.95))}"
                )
        print(
            f"  peak memory of the scrm processes (VmHWM): "
            f"{', '.join(f'{kb / 1024:.0f} MiB' for kb in sorted(memory.values()))}"
        )
        return {
            "stream_events": len(acked) * batch,
            "stream_events_per_s": round(len(acked) * batch / sent_seconds),
            "entered": len(seen),
            "delay_p50_ms": round(quantile(delays, 0.5) * 1000, 1) if delays else None,
            "delay_p95_ms": round(quantile(delays, 0.95) * 1000, 1) if delays else None,
            "delay_p99_ms": round(quantile(delays, 0.99) * 1000, 1) if delays else None,
            "tagging_p95_ms": round(quantile(tagging, 0.95) * 1000, 1) if tagging else None,
            "delay_p50_by_fifth_ms": [round(f * 1000, 1) for f in fifths],
            "stage_p50_ms": {k: round(quantile(v, 0.5) * 1000, 1) for k, v in stages.items() if v},
            "scrm_peak_rss_mib": sorted(round(kb / 1024) for kb in memory.values()),
        }
    finally:
        if up is not None:
            up.send_signal(signal.SIGTERM)
            try:
                up.wait(timeout=30)
            except subprocess.TimeoutExpired:
                up.kill()
        log.close()
        await admin_execute(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def main(args: argparse.Namespace) -> None:
    admin_url = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/14")
    name = f"scrm_bench_segments_{RUN}"
    await admin_execute(admin_url, f'CREATE DATABASE "{name}"')
    try:
        result = await build_and_read(admin_url.rpartition("/")[0] + "/" + name, args)
    finally:
        if args.keep:
            print(f"kept the database {name}")
        else:
            await admin_execute(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    if not args.skip_stream:
        result.update(await stream(admin_url, redis_url, args))
    print(json.dumps({"bench": "segments", **result}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--tags-per-contact", type=int, default=10)
    parser.add_argument("--event-rows-per-contact", type=int, default=8)
    parser.add_argument("--explains", type=int, default=50)
    parser.add_argument("--stream-seconds", type=float, default=20)
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--drain-timeout", type=float, default=120)
    parser.add_argument("--warmup-requests", type=int, default=40)
    parser.add_argument("--skip-stream", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the data (a) and (c) ran on")
    asyncio.run(main(parser.parse_args()))
