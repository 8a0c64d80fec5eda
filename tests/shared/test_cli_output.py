"""What `scrm` writes: the import's report of rejected rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.db import unit_of_work
from shared.runtime import Runtime
from tests.helpers import make_tenant, run_scrm


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
