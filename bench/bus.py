"""Event bus throughput and latency, beside raw Redis LPUSH/BRPOP in the same run.

    python bench/bus.py [--events 20000] [--paced-rate 500] [--paced-seconds 5] [--workers 1]

Pipeline: outbox insert (committed) -> relay -> arq -> handler (one INSERT per
event, in its own processed-events-guarded delivery). The relay and the worker
run as a real `scrm worker --service points` process; the producer is this
process. Baseline: the same JSON payloads through one Redis list, LPUSH from
this process and BRPOP in a separate consumer process, one message per call.

Phase 1 (throughput): the producer emits all events as fast as it can (outbox:
transactions of 100 events; Redis: one LPUSH each) while the consumer drains;
rate = events / (last handled - first produced).
Phase 2 (latency): the producer paces events at a fixed rate, one per
transaction / LPUSH, and each event's produce->handled latency is measured.
Uses DATABASE_URL / REDIS_URL if set, else the local servers; creates and drops
its own database. Prints a human summary and a final JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.handlers import SCHEMA  # noqa: E402
from shared import migrate  # noqa: E402
from shared.config import Settings, plain_postgres_url  # noqa: E402
from shared.db import unit_of_work  # noqa: E402
from shared.events import publish, publish_many  # noqa: E402
from shared.runtime import Runtime  # noqa: E402

RUN = f"{os.getpid()}_{uuid.uuid4().hex[:6]}"
PAYLOAD = {
    "contact_id": str(uuid.UUID(int=42)),
    "order_id": "SO-20261123-0001",
    "amount_fen": 12900,
}


def quantiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    if not ordered:
        return float("nan"), float("nan")
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return p50 * 1000, p99 * 1000


def message(i: int) -> bytes:
    return json.dumps(
        {
            "event_id": str(uuid.uuid4()),
            "type": "bench.tick",
            "i": i,
            "t": time.time(),
            "payload": PAYLOAD,
        }
    ).encode()


# ---------------------------------------------------------------- raw Redis baseline
async def raw_consumer(redis_url: str, key: str, count: int) -> None:
    """Runs in its own process: BRPOP `count` messages, print latencies as JSON."""
    client = aioredis.from_url(redis_url)
    latencies, first, last = [], None, 0.0
    for _ in range(count):
        _, raw = await client.brpop([key], timeout=60)
        now = time.time()
        body = json.loads(raw)
        first = first or body["t"]
        latencies.append(now - body["t"])
        last = now
    print(json.dumps({"latencies": latencies, "first": first, "last": last}))
    await client.aclose()


async def raw_run(redis_url: str, count: int, rate: float | None) -> dict[str, float]:
    key = f"bench:raw:{RUN}:{uuid.uuid4().hex[:6]}"
    consumer = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--raw-consumer",
        redis_url,
        key,
        str(count),
        stdout=asyncio.subprocess.PIPE,
    )
    await asyncio.sleep(0.5)  # consumer connected and blocking
    client = aioredis.from_url(redis_url)
    start = time.perf_counter()
    for i in range(count):
        if rate:
            await _pace(start, i, rate)
        await client.lpush(key, message(i))
    out, _ = await consumer.communicate()
    await client.delete(key)
    await client.aclose()
    result = json.loads(out)
    p50, p99 = quantiles(result["latencies"])
    return {"rate": count / (result["last"] - result["first"]), "p50_ms": p50, "p99_ms": p99}


async def _pace(start: float, i: int, rate: float) -> None:
    due = start + i / rate
    delay = due - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)


# ---------------------------------------------------------------- the scrm bus
async def bus_run(
    runtime: Runtime, admin_dsn: str, count: int, rate: float | None
) -> dict[str, float]:
    conn = await asyncpg.connect(admin_dsn)
    await conn.execute("TRUNCATE bench_handled")
    start = time.perf_counter()
    if rate is None:
        for offset in range(0, count, 100):
            async with unit_of_work(runtime.sessionmaker) as session:
                n = min(100, count - offset)
                await publish_many(session, [("bench.tick", PAYLOAD, None)] * n)
    else:
        for i in range(count):
            await _pace(start, i, rate)
            async with unit_of_work(runtime.sessionmaker) as session:
                await publish(session, "bench.tick", PAYLOAD, tenant_id=None)
    while await conn.fetchval("SELECT count(*) FROM bench_handled") < count:
        if time.perf_counter() - start > 300:
            raise SystemExit("the bus did not handle every event within 300 s")
        await asyncio.sleep(0.05)
    row = await conn.fetchrow(
        """SELECT count(*) AS n, count(DISTINCT event_id) AS distinct_n,
                  EXTRACT(EPOCH FROM max(handled_at) - min(created_at)) AS span,
                  percentile_cont(0.5) WITHIN GROUP (ORDER BY lat) AS p50,
                  percentile_cont(0.99) WITHIN GROUP (ORDER BY lat) AS p99
             FROM (SELECT *, EXTRACT(EPOCH FROM handled_at - created_at) AS lat
                     FROM bench_handled) handled"""
    )
    await conn.close()
    assert row["n"] == row["distinct_n"] == count, "every event handled exactly once"
    return {
        "rate": count / float(row["span"]),
        "p50_ms": float(row["p50"]) * 1000,
        "p99_ms": float(row["p99"]) * 1000,
    }


async def main(args: argparse.Namespace) -> None:
    admin_url = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/14")
    name = f"scrm_bench_{RUN}"
    admin = await asyncpg.connect(plain_postgres_url(admin_url))
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    database_url = admin_url.rpartition("/")[0] + "/" + name
    settings = Settings(
        database_url=database_url,
        redis_url=redis_url,
        queue_prefix=f"bench{RUN}",
        secret_key="b" * 40,
    )
    runtime = await Runtime.open(settings, database_url, redis_url)
    workers: list[subprocess.Popen[bytes]] = []
    try:
        await migrate.upgrade(runtime.engine)
        async with runtime.engine.begin() as conn:
            from sqlalchemy import text

            await conn.execute(text(SCHEMA))
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "SCRM_QUEUE_PREFIX": settings.queue_prefix,
            "SCRM_SECRET_KEY": "b" * 40,
            "SCRM_EXTRA_TASK_MODULES": "bench.handlers",
            "SCRM_LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(ROOT),
        }
        for _ in range(args.workers):
            workers.append(
                subprocess.Popen(
                    [sys.executable, "-m", "shared.cli", "worker", "--service", "points"], env=env
                )
            )
        await bus_run(runtime, plain_postgres_url(database_url), 100, None)  # warm-up: workers up

        raw_tp = await raw_run(redis_url, args.events, None)
        bus_tp = await bus_run(runtime, plain_postgres_url(database_url), args.events, None)
        paced_n = int(args.paced_rate * args.paced_seconds)
        raw_lat = await raw_run(redis_url, paced_n, args.paced_rate)
        bus_lat = await bus_run(runtime, plain_postgres_url(database_url), paced_n, args.paced_rate)
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(timeout=30)
        keys = [k async for k in runtime.redis.scan_iter(match=f"{settings.queue_prefix}:*")]
        if keys:
            await runtime.redis.delete(*keys)
        await runtime.close()
        admin = await asyncpg.connect(plain_postgres_url(admin_url))
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()

    share = bus_tp["rate"] / raw_tp["rate"]

    def line(label: str, r: dict[str, float], digits: int = 1) -> str:
        return (
            f"    {label:<34} {r['rate']:8.0f} ev/s   p50 {r['p50_ms']:8.{digits}f} ms"
            f"   p99 {r['p99_ms']:8.{digits}f} ms"
        )

    print(
        f"bus benchmark: {args.events} events, {args.workers} worker process(es), "
        f"{os.cpu_count()} cores"
    )
    print("  throughput (producer at full speed; latency includes queueing):")
    print(line("raw Redis LPUSH/BRPOP", raw_tp))
    print(line("outbox -> relay -> arq -> handler", bus_tp))
    print(f"    bus / raw = {share:.0%}  (target >= 30%)")
    print(
        f"  latency, paced at {args.paced_rate:.0f} ev/s for {args.paced_seconds:.0f} s, "
        "one event per transaction / LPUSH:"
    )
    print(line("raw Redis LPUSH/BRPOP", raw_lat, 2))
    print(line("outbox -> relay -> arq -> handler", bus_lat, 2))
    summary = {
        "bench": "bus",
        "events": args.events,
        "workers": args.workers,
        "raw_throughput": raw_tp,
        "bus_throughput": bus_tp,
        "bus_over_raw": round(share, 3),
        "paced_rate": args.paced_rate,
        "raw_paced": raw_lat,
        "bus_paced": bus_lat,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--raw-consumer":
        asyncio.run(raw_consumer(sys.argv[2], sys.argv[3], int(sys.argv[4])))
        raise SystemExit(0)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--paced-rate", type=float, default=500.0)
    parser.add_argument("--paced-seconds", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=1)
    asyncio.run(main(parser.parse_args()))
