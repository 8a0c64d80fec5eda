"""Campaigns at scale: enrolling a segment beside a raw INSERT ... SELECT.

    python bench/campaigns.py [--contacts 1000000]

On the local PostgreSQL (DATABASE_URL as the admin URL, else
postgresql://postgres@127.0.0.1:5432/postgres) in a database of its own:

0. A tenant and a static segment of `--contacts` members (generate_series), and
   two live journeys with the default re-entry policy. VACUUM ANALYZE.
1. (a) The enrolment of the segment into the first journey through the service
   (`POST /v1/campaigns/{id}/enrol {"segment_id"}` runs the same function: the
   re-entry records and the enrolments, one statement), then the same again
   (every contact already entered: nothing to do), and beside them a raw
   `INSERT INTO campaign_enrolments ... SELECT` of the same rows for the second
   journey, in the same run. Target: <= 60 s and <= 2x the raw insert.

Prints a human summary and a final JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.campaigns.enrolment import service as enrolment  # noqa: E402
from services.campaigns.journeys import service as journeys  # noqa: E402
from shared import migrate, tenancy  # noqa: E402
from shared.config import plain_postgres_url  # noqa: E402
from shared.db import create_engine, unit_of_work  # noqa: E402

RUN = f"{os.getpid()}_{uuid.uuid4().hex[:6]}"
JOURNEY: dict[str, Any] = {
    "trigger": {"type": "manual"},
    "steps": [
        {
            "id": "s1",
            "type": "action",
            "action": "send",
            "channel": "wecom_single",
            "content": {"text": "{{name}}, a gift for you"},
        }
    ],
}


async def admin_execute(admin_url: str, *statements: str) -> None:
    conn = await asyncpg.connect(plain_postgres_url(admin_url))
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def enrol_segment(database_url: str, args: argparse.Namespace) -> dict[str, Any]:
    from sqlalchemy.ext.asyncio import async_sessionmaker

    engine = create_engine(database_url, pool_size=2)
    await migrate.upgrade(engine)
    sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
    now = datetime.now(UTC)
    async with unit_of_work(sessionmaker) as session:
        tenant = await tenancy.create_tenant(session, "bench-campaigns")
    conn = await asyncpg.connect(plain_postgres_url(database_url))
    try:
        started = time.perf_counter()
        segment_id = await conn.fetchval(
            "INSERT INTO segments (tenant_id, name, kind, status) "
            "VALUES ($1, 'everyone', 'static', 'ready') RETURNING id",
            tenant.id,
        )
        await conn.execute(
            "INSERT INTO segment_members (segment_id, contact_id, tenant_id) "
            "SELECT $1, gen_random_uuid(), $2 FROM generate_series(1, $3)",
            segment_id,
            tenant.id,
            args.contacts,
        )
        await conn.execute("VACUUM ANALYZE segment_members")
        print(
            f"data: a segment of {args.contacts:,} members ({time.perf_counter() - started:.0f} s)"
        )
        ids = []
        for name in ("service", "raw"):
            async with unit_of_work(sessionmaker) as session:
                campaign = await journeys.create(session, tenant.id, name, JOURNEY)
                await journeys.transition(session, tenant.id, campaign.id, "launch", now)
                ids.append(campaign.id)
        started = time.perf_counter()
        async with unit_of_work(sessionmaker) as session:
            found = await enrolment.enrol_segment(session, tenant.id, ids[0], segment_id, now)
        enrol_seconds = time.perf_counter() - started
        started = time.perf_counter()
        async with unit_of_work(sessionmaker) as session:
            again = await enrolment.enrol_segment(session, tenant.id, ids[0], segment_id, now)
        again_seconds = time.perf_counter() - started
        started = time.perf_counter()
        raw = await conn.execute(
            "INSERT INTO campaign_enrolments (tenant_id, campaign_id, version, contact_id, "
            "occurrence, status, step_id, due_at, entered_at) "
            "SELECT $1, $2, 1, contact_id, 'once', 'active', 's1', $3, $3 "
            "FROM segment_members WHERE segment_id = $4",
            tenant.id,
            ids[1],
            now,
            segment_id,
        )
        raw_seconds = time.perf_counter() - started
    finally:
        await conn.close()
        await engine.dispose()
    ratio = enrol_seconds / raw_seconds
    print(f"(a) enrol a segment of {args.contacts:,} contacts")
    lines = [
        ("scrm enrolment (entries + enrolments, one statement)", enrol_seconds, found["enrolled"]),
        ("scrm enrolment again (all entered before)", again_seconds, again["enrolled"]),
        ("raw INSERT ... SELECT of the same rows", raw_seconds, int(raw.split()[-1])),
    ]
    for label, seconds, rows in lines:
        print(f"  {label:<54} {seconds * 1000:9.1f} ms  {rows:,} rows")
    print(f"    -> {ratio:.2f}x the raw insert (target <= 2x, <= 60 s)")
    return {
        "contacts": args.contacts,
        "enrolled": found["enrolled"],
        "enrol_s": round(enrol_seconds, 3),
        "again_s": round(again_seconds, 3),
        "raw_s": round(raw_seconds, 3),
        "ratio": round(ratio, 3),
    }


async def main(args: argparse.Namespace) -> None:
    admin_url = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"scrm_bench_campaigns_{RUN}"
    await admin_execute(admin_url, f'CREATE DATABASE "{name}"')
    try:
        result = await enrol_segment(admin_url.rpartition("/")[0] + "/" + name, args)
    finally:
        await admin_execute(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(json.dumps({"bench": "campaigns", **result}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--contacts", type=int, default=1_000_000)
    asyncio.run(main(parser.parse_args()))
