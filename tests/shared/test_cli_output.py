"""What `scrm` writes: to a reader that stops early (`| head`), and the import's report."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from services.users.importer import import_contacts
from shared.db import unit_of_work
from shared.runtime import Runtime
from tests.helpers import make_tenant, run_scrm

# More than a pipe holds (64 KiB) and Python buffers: the command is still writing
# when its reader goes away.
EXPORTED_CONTACTS = 3000


def _run_into_closing_reader(
    env: dict[str, str], args: list[str], lines_read: int
) -> tuple[int, list[str], str]:
    """Run `scrm ARGS | head -n LINES_READ`: its exit status, what was read, its stderr."""
    process = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stderr is not None
    read = [process.stdout.readline() for _ in range(lines_read)]
    process.stdout.close()
    stderr = process.stderr.read()
    return process.wait(timeout=90), read, stderr


def _ended_quietly(status: int, stderr: str) -> None:
    assert status in (0, -signal.SIGPIPE), stderr
    assert "Broken pipe" not in stderr and "Traceback" not in stderr
    assert "Error" not in stderr and "Exception ignored" not in stderr


async def test_export_into_a_reader_that_stops_early_ends_quietly(
    committed: Runtime, scrm_env: dict[str, str]
) -> None:
    async with unit_of_work(committed.sessionmaker) as session:
        tenant = await make_tenant(session)
        lines = ["phone,name\n"] + [
            f"1390{n:07d},Contact number {n} with a long enough name\n"
            for n in range(EXPORTED_CONTACTS)
        ]
        report = await import_contacts(session, committed.cipher, tenant.id, lines)
    assert report.created == EXPORTED_CONTACTS

    status, read, stderr = await asyncio.to_thread(
        _run_into_closing_reader, scrm_env, ["contacts", "export", "--tenant", tenant.slug], 2
    )
    _ended_quietly(status, stderr)
    assert read[0].startswith("id,name,") and "1390" in read[1]
    async with committed.engine.connect() as conn:
        audited = await conn.scalar(
            text(
                "SELECT count(*) FROM audit_log WHERE tenant_id = :t "
                "AND action = 'read_personal_data contacts_export'"
            ),
            {"t": tenant.id},
        )
    assert audited == 1, "what the reader got was read: the export stays audited"


@pytest.mark.parametrize("args", [["tenant", "list"], ["--help"], ["--version"]])
async def test_any_command_into_a_closed_reader_ends_quietly(
    committed: Runtime, scrm_env: dict[str, str], args: list[str]
) -> None:
    async with unit_of_work(committed.sessionmaker) as session:
        await make_tenant(session)
    status, _, stderr = await asyncio.to_thread(_run_into_closing_reader, scrm_env, args, 0)
    _ended_quietly(status, stderr)


@pytest.mark.parametrize("newline", ["\r\n", "\n"])
async def test_rejected_rows_report_ends_lines_as_the_input(
    committed: Runtime, scrm_env: dict[str, str], tmp_path: Path, newline: str
) -> None:
    async with unit_of_work(committed.sessionmaker) as session:
        tenant = await make_tenant(session)
    source = tmp_path / "contacts.csv"
    rows = ["phone,name", "13700000001,Li Lei", "not-a-phone,Han Meimei", "12,"]
    source.write_bytes(newline.join(rows).encode() + newline.encode())
    result = await run_scrm(scrm_env, "contacts", "import", str(source), "--tenant", tenant.slug)
    assert result.returncode == 0, result.stderr
    report = (tmp_path / "contacts.csv.rejected.csv").read_bytes()
    lines = report.split(newline.encode())
    assert lines[0] == b"line,reason,phone,name"
    assert [line.split(b",")[0] for line in lines[1:]] == [b"3", b"4", b""]
    assert report.count(b"\n") == 3 and report.count(b"\r") == (3 if newline == "\r\n" else 0)
