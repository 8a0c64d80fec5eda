"""Ingestion under load: signed WeCom callbacks and webhook events against `scrm up`.

    python bench/ingest.py [--callbacks 20000] [--webhook-requests 400] [--batch 50]
    python bench/ingest.py --apply-only [--callbacks 20000] ...   the users workers' side alone

Runs `scrm up` on the local PostgreSQL and Redis (DATABASE_URL / REDIS_URL, else
127.0.0.1:5432 / 6379) with a throwaway database, and beside it, served the same
way, a bare FastAPI endpoint that only answers `success` (bench/ceiling.py):
the HTTP ceiling. The same light load generator (bench/loadgen.py, pre-signed
requests, keep-alive connections) drives both in the same run.

Every event is sent twice (the second copy encrypted and signed anew, as a
WeCom retry is), and an extra `scrm worker --service users` is SIGKILLed while
the flood is being processed. At the end the benchmark waits for processing
and counts: 0 events lost, 0 applied twice.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.loadgen import LoadResult, build_request, run_load  # noqa: E402
from services.tagging import pipeline  # noqa: E402
from services.users.wecom_crypto import WeComCrypto  # noqa: E402
from shared.config import plain_postgres_url  # noqa: E402

RUN = f"{os.getpid()}_{uuid.uuid4().hex[:6]}"
CORP_ID = "wwbench0000000001"
TOKEN = "BenchToken1"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
SLUG = "bench"
# How the workers run, taken from the environment (other SCRM_* settings are not).
WORKER_KNOBS = (
    "SCRM_WORKER_PROCESSES",
    "SCRM_WORKER_NICE",
    "SCRM_INBOUND_BATCH_SIZE",
    "SCRM_INBOUND_CONCURRENCY",
)


TAGGING_HANDLER = "tagging.apply_events"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def contact_xml(i: int) -> str:
    return (
        f"<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><FromUserName><![CDATA[sys]]>"
        f"</FromUserName><CreateTime>{1700000000 + i}</CreateTime><MsgType><![CDATA[event]]>"
        "</MsgType><Event><![CDATA[change_external_contact]]></Event><ChangeType>"
        "<![CDATA[add_external_contact]]></ChangeType>"
        f"<UserID><![CDATA[staff{i % 50}]]></UserID><ExternalUserID><![CDATA[wmBench{i:07d}]]>"
        f"</ExternalUserID><State><![CDATA[ch{i % 7}]]></State><WelcomeCode><![CDATA[W{i}]]>"
        "</WelcomeCode></xml>"
    )


def callback_requests(n: int) -> list[tuple[int, bytes]]:
    """Two differently encrypted copies of each of n callbacks, retries sent later."""
    crypto = WeComCrypto(TOKEN, AES_KEY, CORP_ID)
    timestamp = str(int(time.time()))
    built: list[tuple[int, bytes]] = []
    for copy in range(2):
        for i in range(n):
            nonce = f"{copy}n{i}"
            body, signature = crypto.build_callback(
                contact_xml(i), timestamp=timestamp, nonce=nonce
            )
            path = (
                f"/v1/wecom/{SLUG}/callback?msg_signature={signature}"
                f"&timestamp={timestamp}&nonce={nonce}"
            )
            built.append((i, build_request("POST", path, body, {"Content-Type": "text/xml"})))
    first, second = built[:n], built[n:]
    random.Random(7).shuffle(second)
    # Retries trail their originals: each copy goes out after its original.
    return (
        first[: n // 2]
        + [r for pair in zip(first[n // 2 :], second, strict=False) for r in pair]
        + second[n - n // 2 :]
    )


def webhook_requests(secret: str, requests: int, batch: int, contacts: int) -> list[bytes]:
    built = []
    timestamp = str(int(time.time()))
    for r in range(requests):
        events = [
            {
                "event_id": f"ord-{r}-{k}",
                "type": "order.paid",
                "occurred_at": "2026-11-20T10:00:00+08:00",
                "contact": {"external_userid": f"wmBench{(r * batch + k) % contacts:07d}"},
                "properties": {"order_id": f"SO-{r}-{k}", "amount_fen": 100 + k},
            }
            for k in range(batch)
        ]
        body = json.dumps({"events": events}).encode()
        mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
        headers = {
            "Content-Type": "application/json",
            "X-Scrm-Timestamp": timestamp,
            "X-Scrm-Signature": f"sha256={mac.hexdigest()}",
        }
        built.append(build_request("POST", f"/v1/webhooks/{SLUG}/events", body, headers))
    return built + built  # every request (and so every event) twice


def scrm(env: dict[str, str], *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "shared.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]


async def wait_ready(port: int, path: str = "/readyz", seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            try:
                if (await client.get(f"http://127.0.0.1:{port}{path}")).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise SystemExit(f"nothing answered on port {port}")


def line(label: str, r: LoadResult, unit: str = "req/s", per: int = 1) -> str:
    bad = sum(n for s, n in r.statuses.items() if s >= 300) + r.errors
    return (
        f"  {label:<38} {r.rate * per:8.0f} {unit:<9} p50 {r.quantile(0.5):6.1f} ms"
        f"  p99 {r.quantile(0.99):6.1f} ms  ({r.requests} requests, {bad} not 2xx)"
    )


async def main(args: argparse.Namespace) -> None:
    admin_url = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/14")
    name = f"scrm_bench_ingest_{RUN}"
    admin = await asyncpg.connect(plain_postgres_url(admin_url))
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    database_url = admin_url.rpartition("/")[0] + "/" + name
    port, ceiling_port = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SCRM_") or k in WORKER_KNOBS},
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "SCRM_QUEUE_PREFIX": f"bench{RUN}",
        "SCRM_SECRET_KEY": "b" * 40,
        "SCRM_JOB_TIMEOUT_SECONDS": "10",
        "PORT": str(port),
        "PYTHONPATH": str(ROOT),
    }
    processes: list[subprocess.Popen[bytes]] = []
    cores = os.cpu_count() or 1
    workers = (
        f"scrm up's {os.environ.get('SCRM_WORKER_PROCESSES', '1')} "
        "worker process(es) per service (at nice "
        f"{os.environ.get('SCRM_WORKER_NICE', '10')}) on {cores} cores, the users ones claiming "
        f"{os.environ.get('SCRM_INBOUND_BATCH_SIZE', '100')} stored events a transaction in "
        f"{os.environ.get('SCRM_INBOUND_CONCURRENCY', '2')} concurrent transactions, plus one "
        "`scrm worker --service users` SIGKILLed while the callbacks come in"
    )
    log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"scrm-bench-ingest-{RUN}.log", "wb")  # noqa: SIM115, S108
    try:
        scrm(env, "migrate")
        scrm(
            env,
            "tenant",
            "create",
            SLUG,
            "--wecom-corp-id",
            CORP_ID,
            "--wecom-token",
            TOKEN,
            "--wecom-aes-key",
            AES_KEY,
        )
        secret = scrm(env, "webhook-secret", "create", "--tenant", SLUG)
        up = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", "up"], env=env, stdout=log, stderr=log
        )
        ceiling = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "bench.ceiling:app",
                "--port",
                str(ceiling_port),
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            env=env,
            stdout=log,
            stderr=log,
        )
        processes += [up, ceiling]
        await wait_ready(port)
        await wait_ready(ceiling_port, "/docs")

        n = args.callbacks
        callbacks = callback_requests(n)
        hooks = webhook_requests(secret, args.webhook_requests, args.batch, n)
        print(
            f"prepared {len(callbacks)} callback requests ({n} events, each twice) and "
            f"{len(hooks)} webhook requests ({len(hooks) // 2 * args.batch} events, each twice)"
        )

        warm = [r for _, r in callbacks[:200]]
        await run_load("127.0.0.1", ceiling_port, warm, connections=args.connections)
        ceiling_cb = await run_load(
            "127.0.0.1", ceiling_port, [r for _, r in callbacks], connections=args.connections
        )

        extra = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", "worker", "--service", "users"],
            env=env,
            stdout=log,
            stderr=log,
        )
        processes.append(extra)
        await asyncio.sleep(2)

        async def kill_midway() -> None:
            await asyncio.sleep(max(1.0, len(callbacks) / 4000))
            extra.send_signal(signal.SIGKILL)
            print("  (SIGKILLed the extra users worker, pid", extra.pid, "midway)")

        killer = asyncio.create_task(kill_midway())
        scrm_cb = await run_load(
            "127.0.0.1", port, [r for _, r in callbacks], connections=args.connections
        )
        await killer

        ceiling_wh = await run_load(
            "127.0.0.1", ceiling_port, hooks, connections=args.webhook_connections
        )
        scrm_wh = await run_load("127.0.0.1", port, hooks, connections=args.webhook_connections)

        print(
            "HTTP ceiling = bare FastAPI endpoint answering 'success', "
            "same uvicorn setup, same generator"
        )
        print(line("WeCom callbacks: ceiling", ceiling_cb))
        print(line("WeCom callbacks: scrm (verify+decrypt+store)", scrm_cb))
        print(
            f"    -> {scrm_cb.rate / ceiling_cb.rate:.0%} of the ceiling "
            f"(targets: >= 50%, p99 <= 50 ms, >= 2000/s)"
        )
        print(line("webhook requests: ceiling", ceiling_wh))
        print(line(f"webhook requests: scrm ({args.batch} events each)", scrm_wh))
        print(line("webhook events: scrm", scrm_wh, "events/s", args.batch))
        print(f"    -> {scrm_wh.rate / ceiling_wh.rate:.0%} of the ceiling")
        if args.timeline:
            for label, result in (("callbacks", scrm_cb), ("webhooks", scrm_wh)):
                print(f"  {label}, second by second (requests, p50 ms, slowest ms):")
                for second, count, p50, slowest in result.by_second():
                    print(f"    {second:4d} s {count:6d} {p50:7.1f} {slowest:7.1f}")

        started = time.monotonic()
        conn = await asyncpg.connect(plain_postgres_url(database_url))
        unique_events = n + args.webhook_requests * args.batch
        while True:
            pending = await conn.fetchval(
                "SELECT count(*) FROM inbound_events WHERE processed_at IS NULL"
            )
            stored = await conn.fetchval("SELECT count(*) FROM inbound_events")
            if stored >= unique_events and pending == 0:
                break
            if time.monotonic() - started > args.drain_timeout:
                print(f"  processing did not finish in {args.drain_timeout} s: {pending} pending")
                break
            await asyncio.sleep(0.5)
        drained = time.monotonic() - started
        # Applying: from the first stored row (its acknowledgement) until the last one
        # was applied, as the database saw it.
        window = await conn.fetchrow(
            """SELECT count(processed_at) AS rows,
                      EXTRACT(EPOCH FROM max(processed_at) - min(received_at)) AS seconds,
                      EXTRACT(EPOCH FROM max(processed_at) - max(received_at)) AS after
                 FROM inbound_events"""
        )
        apply_seconds = float(window["seconds"] or 0.0)
        apply_rate = window["rows"] / apply_seconds if apply_seconds else 0.0
        row = await conn.fetchrow(
            """SELECT (SELECT count(*) FROM inbound_events) AS stored,
                      (SELECT count(*) FROM contacts WHERE merged_into_id IS NULL) AS contacts,
                      (SELECT count(*) FROM contact_merges) AS merges,
                      (SELECT count(*) FROM contact_events) AS timeline,
                      (SELECT count(*) FROM (SELECT 1 FROM contact_events
                         GROUP BY source, source_event_id HAVING count(*) > 1) d) AS doubled,
                      (SELECT count(*) FROM outbox_events WHERE type = 'contact.added') AS added,
                      (SELECT count(*) FROM outbox_events WHERE type = 'order.paid') AS paid,
                      (SELECT count(*) FROM dead_letters) AS dead"""
        )
        # Downstream: the tagging service's consumer (read model, rules, lifecycle,
        # segments) has applied every event of the types it reads.
        tagging_types = [t for t in pipeline.CONSUMED if not t.endswith(".*")]
        downstream_started = time.monotonic()
        while True:
            behind = await conn.fetchval(
                """SELECT count(*) FROM outbox_events o
                    WHERE (o.type = ANY($1::text[]) OR o.type LIKE 'custom.%')
                      AND NOT EXISTS (SELECT 1 FROM processed_events p
                                       WHERE p.event_id = o.id AND p.handler = $2)
                      AND NOT EXISTS (SELECT 1 FROM dead_letters d
                                       WHERE d.event_id = o.id AND d.handler = $2)""",
                tagging_types,
                TAGGING_HANDLER,
            )
            if behind == 0:
                break
            if time.monotonic() - downstream_started > args.drain_timeout:
                print(f"  tagging did not finish in {args.drain_timeout} s: {behind} behind")
                break
            await asyncio.sleep(0.5)
        tagging = await conn.fetchrow(
            """SELECT count(*) AS events,
                      EXTRACT(EPOCH FROM max(p.processed_at)
                              - (SELECT min(received_at) FROM inbound_events)) AS seconds
                 FROM processed_events p WHERE p.handler = $1""",
            TAGGING_HANDLER,
        )
        tagging_seconds = float(tagging["seconds"] or 0.0)
        end_to_end_rate = unique_events / tagging_seconds if tagging_seconds else 0.0
        await conn.close()
        expected = {
            "stored": unique_events,
            "contacts": n,
            "timeline": unique_events,
            "doubled": 0,
            "added": n,
            "paid": args.webhook_requests * args.batch,
            "dead": 0,
        }
        print(f"processing finished {drained:.1f} s after the last request")
        print(
            f"  applying: {window['rows']} stored events applied, the last {apply_seconds:.1f} s "
            f"after the first was acknowledged: {apply_rate:.0f} events/s "
            f"(the last {float(window['after'] or 0):.1f} s after the last was stored)"
        )
        print(f"  users workers: {workers}")
        print(
            f"  end to end: the tagging service applied {tagging['events']} events "
            f"(read model, tag rules, lifecycle, segments), the last {tagging_seconds:.1f} s "
            f"after the first stored event was acknowledged: {end_to_end_rate:.0f} stored "
            "events/s through users and tagging"
        )
        ok = True
        print(f"  merges   {row['merges']:>8}  (orders that raced their contact's add: merged)")
        for key, want in expected.items():
            got = row[key]
            ok &= got == want
            print(f"  {key:<9} {got:>8}  (expected {want})")
        lost = unique_events - row["timeline"] if row["timeline"] < unique_events else 0
        print(f"  => lost {lost}, applied twice {row['doubled']}: {'OK' if ok else 'MISMATCH'}")
        print(
            json.dumps(
                {
                    "bench": "ingest",
                    "callbacks": {
                        "ceiling_rps": ceiling_cb.rate,
                        "rps": scrm_cb.rate,
                        "p50_ms": scrm_cb.quantile(0.5),
                        "p99_ms": scrm_cb.quantile(0.99),
                    },
                    "webhooks": {
                        "ceiling_rps": ceiling_wh.rate,
                        "rps": scrm_wh.rate,
                        "events_per_s": scrm_wh.rate * args.batch,
                        "p50_ms": scrm_wh.quantile(0.5),
                        "p99_ms": scrm_wh.quantile(0.99),
                    },
                    "apply": {
                        "events": window["rows"],
                        "seconds": apply_seconds,
                        "events_per_s": apply_rate,
                        "workers": workers,
                    },
                    "end_to_end": {
                        "tagging_events": tagging["events"],
                        "seconds": tagging_seconds,
                        "events_per_s": end_to_end_rate,
                    },
                    "counts": dict(row),
                    "ok": ok,
                }
            )
        )
    finally:
        for proc in processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in processes:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()
        admin = await asyncpg.connect(plain_postgres_url(admin_url))
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def apply_only(args: argparse.Namespace) -> None:
    """The users workers' side alone: the same callbacks and orders stored straight into
    a fresh database (no HTTP), then applied by one InboundConsumer in this process, as
    a users worker applies a backlog; prints events/s."""
    from sqlalchemy import text

    from services.users.consumer import InboundConsumer
    from services.users.ingest import Inbound, InboundWriter
    from services.users.wecom_crypto import parse_xml
    from services.users.wecom_events import dedupe_key, event_type
    from shared import migrate, tenancy
    from shared.config import Settings
    from shared.db import unit_of_work
    from shared.events import load_subscriptions
    from shared.runtime import Runtime

    admin_url = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/14")
    name = f"scrm_bench_apply_{RUN}"
    admin = await asyncpg.connect(plain_postgres_url(admin_url))
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    database_url = admin_url.rpartition("/")[0] + "/" + name
    try:
        settings = Settings(
            database_url=database_url,
            redis_url=redis_url,
            queue_prefix=f"bench{RUN}",
            secret_key="b" * 40,
            data_dir=Path(os.environ.get("TMPDIR", "/tmp")) / f"scrm-bench-{RUN}",  # noqa: S108
        )
        runtime = await Runtime.open(settings, database_url, redis_url)
        await migrate.upgrade(runtime.engine)
        load_subscriptions()
        async with unit_of_work(runtime.sessionmaker) as session:
            tenant = await tenancy.create_tenant(session, SLUG)
        items = []
        for i in range(args.callbacks):
            xml = contact_xml(i)
            msg = parse_xml(xml)
            items.append(
                Inbound(tenant.id, "wecom", dedupe_key(msg, xml), event_type(msg), {"xml": xml})
            )
        for k in range(args.webhook_requests * args.batch):
            event_id = f"ord-{k}"
            items.append(
                Inbound(
                    tenant.id,
                    "event",
                    event_id,
                    "order.paid",
                    {
                        "event_id": event_id,
                        "type": "order.paid",
                        "occurred_at": "2026-11-20T10:00:00+08:00",
                        "contact": {"external_userid": f"wmBench{k % args.callbacks:07d}"},
                        "properties": {"order_id": f"SO-{k}", "amount_fen": 100 + k % 50},
                        "via": "webhook",
                    },
                )
            )
        writer = InboundWriter(runtime)
        try:
            for start in range(0, len(items), 1000):
                await writer.store(items[start : start + 1000])
        finally:
            await writer.close()
        consumer = InboundConsumer(runtime)
        started = time.perf_counter()
        applied = await consumer.drain()
        seconds = time.perf_counter() - started
        async with runtime.engine.connect() as conn:
            timeline = await conn.scalar(text("SELECT count(*) FROM contact_events"))
            contacts = await conn.scalar(text("SELECT count(*) FROM contacts"))
        await runtime.close()
        print(
            f"applied {applied} stored events ({args.callbacks} contact adds, then "
            f"{len(items) - args.callbacks} orders) in {seconds:.1f} s: "
            f"{applied / seconds:.0f} events/s, one InboundConsumer (batches of "
            f"{consumer.batch_size}, one at a time) in this process; {contacts} contacts, "
            f"{timeline} timeline entries"
        )
        print(
            json.dumps(
                {
                    "bench": "ingest.apply_only",
                    "events": applied,
                    "seconds": seconds,
                    "events_per_s": applied / seconds,
                    "batch_size": consumer.batch_size,
                    "ok": applied == len(items) == timeline and contacts == args.callbacks,
                }
            )
        )
    finally:
        admin = await asyncpg.connect(plain_postgres_url(admin_url))
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--callbacks", type=int, default=20000)
    parser.add_argument("--webhook-requests", type=int, default=400)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--webhook-connections", type=int, default=8)
    parser.add_argument("--drain-timeout", type=float, default=600)
    parser.add_argument(
        "--timeline", action="store_true", help="print scrm's latencies second by second"
    )
    parser.add_argument(
        "--apply-only",
        action="store_true",
        help="no HTTP: store the events directly and time one users consumer applying them",
    )
    parsed = parser.parse_args()
    asyncio.run(apply_only(parsed) if parsed.apply_only else main(parsed))
