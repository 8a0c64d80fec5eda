"""`scrm up`'s supervisor: crashed parts are restarted; one that keeps crashing stops all,
and says so."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from shared import supervisor
from shared.cli import SERVICES, worker_parts
from tests.helpers import run_scrm


def test_a_part_that_keeps_crashing_stops_everything_and_is_named(tmp_path: Path) -> None:
    starts = tmp_path / "starts"
    crash = f"open({str(starts)!r}, 'a').write('x'); raise SystemExit(3)"
    steady = "import time; time.sleep(600)"
    crashing = supervisor.supervise(
        {"api": [sys.executable, "-c", crash], "workers-1": [sys.executable, "-c", steady]},
        dict(os.environ),
    )
    assert crashing == "api"
    # Started once, then restarted until more than the limit within a minute.
    assert len(starts.read_text()) == supervisor.MAX_RESTARTS_PER_MINUTE + 1


async def test_scrm_up_exits_non_zero_when_a_part_keeps_crashing(
    scrm_env: dict[str, str],
) -> None:
    # The API's port is taken: its part fails at start, every time.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        env = {**scrm_env, "HOST": "127.0.0.1", "PORT": port, "SCRM_WORKER_PROCESSES": "1"}
        result = await run_scrm(env, "up")
    assert result.returncode == 1, result.stderr[-2000:]
    assert "api kept crashing; everything was stopped" in result.stderr


def test_scrm_up_runs_each_services_workers_in_processes_of_their_own() -> None:
    parts = worker_parts(2)
    assert sorted(parts) == sorted(
        [
            "api",
            "priority-campaigns",
            *(f"workers-{s}-{n}" for s in SERVICES for n in (1, 2)),
        ]
    )
    for name, command in parts.items():
        if name == "api":
            assert command[-2:] == ["run-part", "--api"]
            continue
        if name.startswith("priority-"):
            # The priority loops alone (the welcome lane), in one process.
            assert command[-3:] == ["--service", "campaigns", "--priority"]
            continue
        service = name.split("-")[1]
        # Its own service's worker only; the relay and the scheduler with the users ones.
        assert command[command.index("--service") + 1] == service
        assert command.count("--service") == 1
        assert ("--dispatch" in command) == (service == "users")
    assert sorted(worker_parts(1)) == sorted(
        ["api", "priority-campaigns", *(f"workers-{s}" for s in SERVICES)]
    )
