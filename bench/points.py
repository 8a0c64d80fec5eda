"""Points ledger: earnings per second beside pgbench, and a 200-way redemption race.

    python bench/points.py [--clients 8] [--seconds 10] [--members 1000] [--scale 10]
                           [--pgbench-mode prepared] [--race 200] [--covered 37]

1. Earnings: `--clients` concurrent clients in this process, each looping for
   `--seconds`: services.points.ledger.service.earn_by_rule for a random member among
   `--members` pre-created contacts, with a unique source_key, on the engine: each
   earning is a transaction of its own (one statement, autocommit). Prints tx/s,
   p50/p99 latency (pool checkout to commit) and the write transactions the
   server counted per earning. For comparison, the same for earn_by_rule(session, ...) as the only
   work of a shared.db.unit_of_work (BEGIN, the earning, COMMIT). Before the
   measured runs every member earns once (accounts exist, tiers set) and the
   database is VACUUM ANALYZEd, as `pgbench -i` does for its tables: plans cached
   while the tables were empty would otherwise be measured (see the autovacuum
   setting printed at the top).
2. Baseline: pgbench's TPC-B-like script on the same PostgreSQL server with the
   same client count (`-c <clients> -j 2 -T <seconds>`), in a database of its own
   initialised with `pgbench -i -s <scale>`; run after (never beside) phase 1.
   Prints its tps and ours (the first figure of 1) / pgbench (target >= 50%).
3. The race: one member whose balance covers exactly `--covered` redemptions of
   50 points, then `--race` simultaneous POST .../redemptions through the real
   HTTP API (`scrm serve --service points` in a subprocess). OK only when exactly
   `--covered` got 201, the rest 409 insufficient_points, and the balance ends at
   0. Then `scrm points verify` checks the ledger's invariants over the tenant.

Uses DATABASE_URL (as the admin URL) / REDIS_URL if set, else the local servers
(postgresql://postgres@127.0.0.1:5432/postgres, redis://127.0.0.1:6379/15);
creates and drops its own two databases. Prints a human summary and a final
JSON line; exits 1 when the race or the verification fails.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import re
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
from urllib.parse import unquote, urlsplit

import asyncpg  # type: ignore[import-untyped]
import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.points.ledger import service  # noqa: E402
from services.points.ledger.booking import Booked  # noqa: E402
from services.points.rules.service import TenantRules, load_rules  # noqa: E402
from shared import auth, migrate, tenancy  # noqa: E402
from shared.config import Settings, plain_postgres_url  # noqa: E402
from shared.db import unit_of_work  # noqa: E402
from shared.runtime import Runtime  # noqa: E402

RUN = f"{os.getpid()}_{uuid.uuid4().hex[:6]}"
SLUG = "bench-points"
SECRET = "p" * 40
REDEEM = 50  # points per redemption in the race
TPS_LINE = re.compile(r"tps = ([0-9.]+) \(without initial connection time\)")
LATENCY_LINE = re.compile(r"latency average = ([0-9.]+) ms")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def quantiles(values: list[float]) -> tuple[float, float]:
    """p50 and p99 in milliseconds of latencies in seconds."""
    ordered = sorted(values)
    if not ordered:
        return float("nan"), float("nan")
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return p50 * 1000, p99 * 1000


async def admin_execute(admin_url: str, *statements: str) -> None:
    conn = await asyncpg.connect(plain_postgres_url(admin_url))
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


# ---------------------------------------------------------------- 1. earnings
async def earn_once(
    runtime: Runtime,
    tenant_id: uuid.UUID,
    rules: TenantRules,
    contact: uuid.UUID,
    source_key: str,
    in_session: bool = False,
) -> None:
    """One earning: a transaction of its own (on the engine), or the only work of a
    caller's unit of work (in a session: BEGIN, the earning, COMMIT)."""
    if in_session:
        async with unit_of_work(runtime.sessionmaker) as session:
            booked = await _earn(session, tenant_id, rules, contact, source_key)
    else:
        booked = await _earn(runtime.engine, tenant_id, rules, contact, source_key)
    assert booked is not None and not booked.replayed


async def _earn(
    db: AsyncSession | AsyncEngine,
    tenant_id: uuid.UUID,
    rules: TenantRules,
    contact: uuid.UUID,
    source_key: str,
) -> Booked | None:
    return await service.earn_by_rule(
        db,
        tenant_id,
        contact,
        rule="checkin",
        base_points=rules.rules.earning.checkin.points,
        occurred_at=datetime.now(UTC),
        source_key=source_key,
        rules=rules,
        reason="bench check-in",
    )


async def earn_run(
    runtime: Runtime,
    tenant_id: uuid.UUID,
    rules: TenantRules,
    members: list[uuid.UUID],
    clients: int,
    seconds: float,
    tag: str,
    in_session: bool = False,
) -> dict[str, float]:
    """`clients` loops of one earning per transaction for `seconds`; tx/s and latency,
    and the write transactions the server counted per earning."""
    transactions_before = await server_transactions(runtime)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    rng = random.Random(42)
    cpu_before = time.process_time()
    start = time.perf_counter()
    deadline = start + seconds
    finished = [start] * clients

    async def client(c: int) -> None:
        i = 0
        mine = latencies[c]
        while True:
            began = time.perf_counter()
            if began >= deadline:
                break
            await earn_once(
                runtime, tenant_id, rules, rng.choice(members), f"bench:{tag}:{c}:{i}", in_session
            )
            mine.append(time.perf_counter() - began)
            i += 1
        finished[c] = time.perf_counter()

    await asyncio.gather(*(client(c) for c in range(clients)))
    elapsed = max(finished) - start
    cpu = time.process_time() - cpu_before
    flat = [x for lat in latencies for x in lat]
    p50, p99 = quantiles(flat)
    transactions = await server_transactions(runtime) - transactions_before
    return {
        "server_transactions_per_earning": transactions / max(1, len(flat)),
        "transactions": len(flat),
        "seconds": elapsed,
        "tps": len(flat) / elapsed,
        "p50_ms": p50,
        "p99_ms": p99,
        # This process runs every client on one core: how busy it was, and its CPU per
        # transaction (Python, SQLAlchemy, asyncpg), tells whether the client is the limit.
        "client_cpu_share": cpu / elapsed,
        "client_cpu_us_per_tx": cpu / max(1, len(flat)) * 1e6,
    }


async def warm_up(
    runtime: Runtime,
    tenant_id: uuid.UUID,
    rules: TenantRules,
    members: list[uuid.UUID],
    clients: int,
) -> None:
    """One earning for every member (its account is created, its tier set), so the
    measured run sees accounts in their steady state and a warm connection pool."""
    queue = list(members)

    async def client() -> None:
        while queue:
            member = queue.pop()
            await earn_once(runtime, tenant_id, rules, member, f"bench:warm:{member}")

    await asyncio.gather(*(client() for _ in range(clients)))


async def server_transactions(runtime: Runtime) -> int:
    """The server's next transaction id: every transaction that writes takes one, so
    the difference over a run counts the write transactions of the whole server
    (nothing else writes while the benchmark runs). Reading it takes none."""
    async with runtime.engine.connect() as conn:
        found = await conn.scalar(text("SELECT pg_snapshot_xmax(pg_current_snapshot())::text"))
    return int(found or 0)


# ---------------------------------------------------------------- 2. pgbench
def pgbench_args(url: str) -> tuple[list[str], dict[str, str]]:
    parts = urlsplit(url)
    args = ["-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 5432)]
    args += ["-U", unquote(parts.username or "postgres")]
    env = dict(os.environ)
    if parts.password:
        env["PGPASSWORD"] = unquote(parts.password)
    return args, env


def pgbench_init(admin_url: str, dbname: str, scale: int) -> None:
    conn_args, env = pgbench_args(admin_url)
    init = subprocess.run(
        ["pgbench", *conn_args, "-i", "-q", "-s", str(scale), dbname],
        env=env,
        capture_output=True,
        text=True,
    )
    if init.returncode:
        raise SystemExit(f"pgbench -i failed:\n{init.stderr}")


def pgbench_run(
    admin_url: str, dbname: str, clients: int, seconds: float, mode: str
) -> dict[str, Any]:
    conn_args, env = pgbench_args(admin_url)
    command = ["pgbench", *conn_args, "-c", str(clients), "-j", str(min(2, clients))]
    command += ["-T", str(max(1, round(seconds))), "-M", mode, dbname]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"pgbench failed:\n{done.stdout}\n{done.stderr}")
    tps = TPS_LINE.search(done.stdout)
    latency = LATENCY_LINE.search(done.stdout)
    if tps is None:
        raise SystemExit(f"no tps line in pgbench's output:\n{done.stdout}")
    return {
        "command": " ".join(command),
        "tps": float(tps.group(1)),
        "latency_avg_ms": float(latency.group(1)) if latency else None,
    }


# ---------------------------------------------------------------- 3. the race
async def wait_ready(port: int, server: subprocess.Popen[bytes], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise SystemExit(f"the API exited with code {server.returncode}")
            try:
                if (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise SystemExit(f"the API did not get ready on port {port} within {seconds:.0f} s")


async def race(port: int, key: str, member: uuid.UUID, racers: int, covered: int) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=racers, max_keepalive_connections=racers)
    base = f"http://127.0.0.1:{port}/v1/points/accounts/{member}"
    async with httpx.AsyncClient(limits=limits, timeout=120, headers=headers) as client:
        credit = await client.post(
            f"{base}/adjustments", json={"points": covered * REDEEM, "reason": "bench"}
        )
        if credit.status_code != 201:
            raise SystemExit(f"the credit failed: {credit.status_code} {credit.text}")
        before = (await client.get(base)).json()["balance"]
        go = asyncio.Event()

        async def redeem() -> httpx.Response:
            await go.wait()
            return await client.post(
                f"{base}/redemptions", json={"points": REDEEM, "reason": "race"}
            )

        tasks = [asyncio.create_task(redeem()) for _ in range(racers)]
        await asyncio.sleep(0)  # every task is waiting on the start signal
        started = time.perf_counter()
        go.set()
        answers = await asyncio.gather(*tasks, return_exceptions=True)
        took = time.perf_counter() - started
        final = await client.get(base)
        ledger = await client.get(f"{base}/ledger", params={"limit": 500})
    outcomes: collections.Counter[str] = collections.Counter()
    for answer in answers:
        if isinstance(answer, BaseException):
            outcomes[f"error {type(answer).__name__}"] += 1
        elif answer.status_code == 409:
            code = answer.json().get("error", {}).get("code")
            outcomes[f"409 {code}"] += 1
        else:
            outcomes[str(answer.status_code)] += 1
    spends = [e for e in ledger.json()["items"] if e["kind"] == "spend"]
    balance = int(final.json()["balance"])
    ok = (
        outcomes["201"] == covered
        and outcomes["409 insufficient_points"] == racers - covered
        and balance == 0
        and len(spends) == covered
    )
    return {
        "racers": racers,
        "covered": covered,
        "balance_before": before,
        "outcomes": dict(outcomes),
        "spend_entries": len(spends),
        "final_balance": balance,
        "seconds": took,
        "ok": ok,
    }


def run_verify(env: dict[str, str]) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "shared.cli", "points", "verify", "--tenant", SLUG],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done.returncode, (done.stdout + done.stderr).strip()


# ---------------------------------------------------------------- main
async def setup(
    runtime: Runtime, members: int
) -> tuple[uuid.UUID, str, list[uuid.UUID], uuid.UUID]:
    """The tenant, an operator key, `members` contacts (set-based) and the race member."""
    async with unit_of_work(runtime.sessionmaker) as session:
        tenant = await tenancy.create_tenant(session, SLUG)
        _, key = await auth.create_api_key(
            session, tenant_id=tenant.id, role="operator", name="bench/points.py"
        )
        rows = await session.execute(
            text(
                "INSERT INTO contacts (tenant_id, id)"
                " SELECT :t, gen_random_uuid() FROM generate_series(1, :n) RETURNING id"
            ),
            {"t": tenant.id, "n": members + 1},
        )
        ids = [r.id for r in rows]
    return tenant.id, key, ids[:-1], ids[-1]


async def main(args: argparse.Namespace) -> int:
    admin_url = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")
    name, pgb_name = f"scrm_bench_points_{RUN}", f"scrm_bench_pgbench_{RUN}"
    database_url = admin_url.rpartition("/")[0] + "/" + name
    prefix = f"benchpoints{RUN}"
    settings = Settings(
        database_url=database_url,
        redis_url=redis_url,
        queue_prefix=prefix,
        secret_key=SECRET,
        db_pool_size=max(10, args.clients),
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SCRM_")},
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "SCRM_QUEUE_PREFIX": prefix,
        "SCRM_SECRET_KEY": SECRET,
        "SCRM_LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(ROOT),
    }
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"scrm-bench-points-{RUN}.log"  # noqa: S108
    server: subprocess.Popen[bytes] | None = None
    runtime: Runtime | None = None
    main_task = asyncio.current_task()
    assert main_task is not None
    # SIGTERM as Ctrl-C: cancel, so the cleanup below runs either way.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    await admin_execute(admin_url, f'CREATE DATABASE "{name}"')
    try:
        runtime = await Runtime.open(settings, database_url, redis_url)
        await migrate.upgrade(runtime.engine)
        tenant_id, key, members, racer = await setup(runtime, args.members)
        async with unit_of_work(runtime.sessionmaker) as session:
            rules = await load_rules(session, tenant_id)
        loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
        print(
            f"points benchmark: {args.clients} clients, {args.seconds:g} s per run, "
            f"{len(members)} members, {os.cpu_count()} cores, event loop: {loop}"
        )
        print(
            "  load average before the runs: {:.2f} {:.2f} {:.2f} (other work on these cores "
            "skews both sides)".format(*os.getloadavg())
        )
        async with runtime.engine.connect() as conn:
            found = ", ".join(
                f"{r.name}={r.setting}"
                for r in await conn.execute(
                    text(
                        "SELECT name, setting FROM pg_settings WHERE name IN ('autovacuum',"
                        " 'fsync', 'synchronous_commit', 'shared_buffers', 'max_connections')"
                        " ORDER BY name"
                    )
                )
            )
        print(f"  server: {found}")

        # 1. earnings through the service layer
        await warm_up(runtime, tenant_id, rules, members, args.clients)
        await admin_execute(database_url, "VACUUM ANALYZE", "CHECKPOINT")
        ours = await earn_run(runtime, tenant_id, rules, members, args.clients, args.seconds, "run")
        await admin_execute(database_url, "CHECKPOINT")
        in_session = await earn_run(
            runtime, tenant_id, rules, members, args.clients, args.seconds, "uow", in_session=True
        )
        async with runtime.engine.connect() as conn:
            counted = {
                tag: await conn.scalar(
                    text("SELECT count(*) FROM points_ledger WHERE source_key LIKE :p"),
                    {"p": f"bench:{tag}:%"},
                )
                for tag in ("run", "uow")
            }
        assert counted["run"] == ours["transactions"], (counted, ours["transactions"])
        assert counted["uow"] == in_session["transactions"], (counted, in_session)
        for label, figures, tag in (
            ("1. earn_by_rule(engine, ...): each earning a transaction of its own", ours, "run"),
            (
                "   for comparison, earn_by_rule(session, ...) as the only work of a "
                "unit_of_work (BEGIN, the earning, COMMIT)",
                in_session,
                "uow",
            ),
        ):
            print(f"  {label}:")
            print(
                f"     {figures['tps']:8.0f} tx/s   p50 {figures['p50_ms']:6.2f} ms   p99 "
                f"{figures['p99_ms']:6.2f} ms   ({figures['transactions']} earnings in "
                f"{figures['seconds']:.1f} s; {counted[tag]} ledger entries counted back; "
                f"{figures['server_transactions_per_earning']:.2f} write transactions per earning)"
            )
            print(
                f"     this process (all {args.clients} clients, one event loop): "
                f"{figures['client_cpu_share']:.0%} of a core, "
                f"{figures['client_cpu_us_per_tx']:.0f} us of CPU per earning"
            )

        # 2. pgbench on the same server, same clients, after phase 1
        await admin_execute(admin_url, f'CREATE DATABASE "{pgb_name}"')
        await asyncio.to_thread(pgbench_init, admin_url, pgb_name, args.scale)
        await admin_execute(admin_url, "CHECKPOINT")
        pgb = await asyncio.to_thread(
            pgbench_run, admin_url, pgb_name, args.clients, args.seconds, args.pgbench_mode
        )
        share = ours["tps"] / pgb["tps"]
        print(
            f"  2. pgbench TPC-B-like (scale {args.scale}, protocol: {args.pgbench_mode}): "
            f"{pgb['command']}"
        )
        print(
            f"     {pgb['tps']:8.0f} tx/s   latency avg {pgb['latency_avg_ms']} ms"
            "   (tps without initial connection time)"
        )
        print(f"     ours / pgbench = {share:.0%}  (target >= 50%)")

        # 3. the race through the HTTP API
        port = free_port()
        with open(log_path, "wb") as log:
            server = subprocess.Popen(
                [sys.executable, "-m", "shared.cli", "serve", "--service", "points"],
                env={**env, "PORT": str(port)},
                stdout=log,
                stderr=log,
            )
        await wait_ready(port, server)
        result = await race(port, key, racer, args.race, args.covered)
        print(
            f"  3. race: {args.race} simultaneous redemptions of {REDEEM} points, balance "
            f"{result['balance_before']} (covers exactly {args.covered}), "
            f"served by `scrm serve --service points`:"
        )
        outcomes = result["outcomes"]
        print(
            f"     {outcomes.get('201', 0)} x 201, "
            f"{outcomes.get('409 insufficient_points', 0)} x 409 insufficient_points"
            + "".join(
                f", {n} x {k}"
                for k, n in outcomes.items()
                if k not in ("201", "409 insufficient_points")
            )
            + f" in {result['seconds']:.2f} s; final balance {result['final_balance']}, "
            f"{result['spend_entries']} spend entries => {'OK' if result['ok'] else 'FAILED'}"
        )
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        code, verified = await asyncio.to_thread(run_verify, env)
        print(f"  scrm points verify --tenant {SLUG} (exit {code}):")
        for line in verified.splitlines():
            print(f"     {line}")
        summary = {
            "bench": "points",
            "clients": args.clients,
            "seconds": args.seconds,
            "members": len(members),
            "earn": ours,
            "earn_in_session": in_session,
            "pgbench": {**pgb, "scale": args.scale, "mode": args.pgbench_mode},
            "ours_over_pgbench": round(share, 3),
            "race": result,
            "verify": {"exit": code, "output": verified},
            "ok": bool(result["ok"]) and code == 0,
        }
        print(json.dumps(summary))
        return 0 if summary["ok"] else 1
    finally:
        if server is not None and server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        if runtime is not None:
            keys = [k async for k in runtime.redis.scan_iter(match=f"{prefix}:*")]
            if keys:
                await runtime.redis.delete(*keys)
            await runtime.close()
        await admin_execute(
            admin_url,
            f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
            f'DROP DATABASE IF EXISTS "{pgb_name}" WITH (FORCE)',
        )
        if server is not None and server.returncode not in (0, -signal.SIGTERM):
            print(f"  (the API exited with {server.returncode}; its log: {log_path})")
        else:
            log_path.unlink(missing_ok=True)


def run() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--scale", type=int, default=10, help="pgbench -s (>= --clients)")
    parser.add_argument(
        "--pgbench-mode", choices=("simple", "extended", "prepared"), default="prepared"
    )
    parser.add_argument("--race", type=int, default=200, help="simultaneous redemptions")
    parser.add_argument("--covered", type=int, default=37, help="redemptions the balance covers")
    args = parser.parse_args()
    if args.scale < args.clients:
        parser.error("--scale must be at least --clients (pgbench's branches rows)")
    if not 0 < args.covered <= args.race:
        parser.error("--covered must be between 1 and --race")
    try:
        import uvloop  # what `scrm worker` and `scrm serve` run on
    except ImportError:
        raise SystemExit(asyncio.run(main(args))) from None
    raise SystemExit(uvloop.run(main(args)))


if __name__ == "__main__":
    run()
