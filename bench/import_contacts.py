"""Contacts CSV import throughput, beside a raw asyncpg COPY of the same rows in the same run.

    python bench/import_contacts.py [--rows 100000] [--chunk-rows 20000]

Generates a CSV (phones, names in Chinese and pinyin, unionids, owners and
three attributes) in a temp dir, creates a throwaway database on the local
PostgreSQL (DATABASE_URL, else postgresql://postgres@127.0.0.1:5432/postgres),
migrates it, creates a tenant and imports the file through
`services.users.importer.import_contacts` in one unit of work, exactly as
`scrm contacts import` does (without the progress bar). Then imports the same
file again (idempotent re-run: nothing created). Baseline: the same file read
with csv.reader and COPYed by asyncpg, as text columns, into a plain table.
Prints a human summary and a final JSON line; drops its database.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.users.importer import CHUNK_ROWS, ImportReport, import_contacts  # noqa: E402
from shared import migrate, tenancy  # noqa: E402
from shared.config import plain_postgres_url  # noqa: E402
from shared.crypto import FieldCipher  # noqa: E402
from shared.db import create_engine, create_sessionmaker, unit_of_work  # noqa: E402

RUN = f"{os.getpid()}_{uuid.uuid4().hex[:6]}"
HEADER = [
    "phone",
    "unionid",
    "name",
    "owner_staff_userid",
    "attr.city",
    "attr.level",
    "attr.source",
]
SURNAMES = (
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程"
)
GIVEN = "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超秀兰霞平刚桂英华建国志红玉梅晓东海燕雪婷鹏辉"
PINYIN_SURNAMES = ["Wang", "Li", "Zhang", "Liu", "Chen", "Yang", "Huang", "Zhao", "Wu", "Zhou"]
PINYIN_GIVEN = ["Wei", "Fang", "Na", "Xiuying", "Min", "Jing", "Li", "Qiang", "Lei", "Jun", "Yang"]
CITIES = ["上海", "北京", "杭州", "深圳", "广州", "成都", "Wuhan", "Nanjing", "Xi'an", "Suzhou"]


def generate(path: Path, rows: int) -> None:
    rng = random.Random(20261123)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        for i in range(rows):
            if i % 2:
                name = rng.choice(SURNAMES) + "".join(rng.choices(GIVEN, k=rng.randint(1, 2)))
            else:
                name = f"{rng.choice(PINYIN_SURNAMES)} {rng.choice(PINYIN_GIVEN)}"
            writer.writerow(
                [
                    f"1{rng.choice('3578')}{i:09d}",
                    f"o{uuid.UUID(int=rng.getrandbits(128)).hex[:27]}",
                    name,
                    f"staff-{rng.randint(1, 50):02d}",
                    rng.choice(CITIES),
                    str(rng.randint(0, 5)),
                    rng.choice(["fair", "shop", "live", "referral"]),
                ]
            )


async def timed_import(
    sessionmaker: async_sessionmaker[AsyncSession],
    cipher: FieldCipher,
    tenant_id: uuid.UUID,
    path: Path,
    chunk_rows: int,
) -> tuple[float, ImportReport]:
    start = time.perf_counter()
    async with unit_of_work(sessionmaker) as session:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            report = await import_contacts(
                session, cipher, tenant_id, handle, chunk_rows=chunk_rows
            )
    return time.perf_counter() - start, report


async def raw_copy(dsn: str, path: Path) -> float:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "CREATE TABLE bench_raw_contacts (phone text, unionid text, name text, owner text,"
            " city text, level text, source text)"
        )
        start = time.perf_counter()
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle)
            next(reader)
            records = [tuple(row) for row in reader]
        await conn.copy_records_to_table("bench_raw_contacts", records=records)
        return time.perf_counter() - start
    finally:
        await conn.close()


def describe(report: ImportReport) -> str:
    return (
        f"rows={report.rows} created={report.created} updated={report.updated} "
        f"unchanged={report.unchanged} rejected={len(report.rejected)}"
    )


async def main(args: argparse.Namespace) -> None:
    admin_url = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"scrm_bench_import_{RUN}"
    admin = await asyncpg.connect(plain_postgres_url(admin_url))
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    database_url = admin_url.rpartition("/")[0] + "/" + name
    engine = create_engine(database_url, pool_size=2)
    cipher = FieldCipher.from_secret(b"b" * 40)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "contacts.csv"
            started = time.perf_counter()
            generate(path, args.rows)
            generated = time.perf_counter() - started
            size_mb = path.stat().st_size / 1e6
            await migrate.upgrade(engine)
            sessionmaker = create_sessionmaker(engine)
            async with unit_of_work(sessionmaker) as session:
                tenant = await tenancy.create_tenant(session, f"bench-{RUN[-6:]}")
            first, report = await timed_import(
                sessionmaker, cipher, tenant.id, path, args.chunk_rows
            )
            second, rerun = await timed_import(
                sessionmaker, cipher, tenant.id, path, args.chunk_rows
            )
            baseline = await raw_copy(plain_postgres_url(database_url), path)
    finally:
        await engine.dispose()
        admin = await asyncpg.connect(plain_postgres_url(admin_url))
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()

    print(
        f"contacts import benchmark: {args.rows} rows ({size_mb:.1f} MB CSV, generated in "
        f"{generated:.1f} s), chunks of {args.chunk_rows}, {os.cpu_count()} cores"
    )
    print(f"  import         {first:7.2f} s  {args.rows / first:9.0f} rows/s   {describe(report)}")
    print(f"  re-run         {second:7.2f} s  {args.rows / second:9.0f} rows/s   {describe(rerun)}")
    print(f"  raw COPY       {baseline:7.2f} s  {args.rows / baseline:9.0f} rows/s   (baseline)")
    verdict = "ok" if first <= 30 else "MISSED"
    print(f"  import / raw COPY = {first / baseline:.1f}x; target <= 30 s: {verdict}")
    print(
        json.dumps(
            {
                "bench": "import_contacts",
                "rows": args.rows,
                "chunk_rows": args.chunk_rows,
                "csv_mb": round(size_mb, 2),
                "import_seconds": round(first, 3),
                "import_rows_per_second": round(args.rows / first),
                "rerun_seconds": round(second, 3),
                "rerun_report": {
                    "created": rerun.created,
                    "updated": rerun.updated,
                    "unchanged": rerun.unchanged,
                    "rejected": len(rerun.rejected),
                },
                "raw_copy_seconds": round(baseline, 3),
                "raw_copy_rows_per_second": round(args.rows / baseline),
            }
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--chunk-rows", type=int, default=CHUNK_ROWS)
    asyncio.run(main(parser.parse_args()))
