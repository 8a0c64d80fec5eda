"""`scrm up` with no DATABASE_URL / REDIS_URL: the embedded servers, as a new user gets them."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

# Servers of their own on ports picked when they start: one test at a time.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("embedded-servers")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # mkdtemp: mode 700 under /tmp, like a user's home, which the unprivileged
    # postgres user must still be able to traverse when we run as root.
    root = Path(tempfile.mkdtemp(prefix="scrm-up-"))
    yield root / "data"
    for proc in psutil.process_iter(["cmdline"]):
        if str(root) in " ".join(proc.info["cmdline"] or []):
            proc.kill()
    shutil.rmtree(root, ignore_errors=True)


def embedded_processes(data_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if str(data_dir) in " ".join(proc.info["cmdline"] or []):
            found.append(proc)
    return found


class Up:
    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("DATABASE_URL", "REDIS_URL") and not k.startswith("SCRM_")
        }
        self.env.update(SCRM_DATA_DIR=str(data_dir), PORT=str(self.port), HOST="127.0.0.1")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", "up"], env=self.env, start_new_session=True
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "scrm up exited while starting"
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError("scrm up never answered /readyz")

    def port_freed(self, within: float) -> bool:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) != 0:
                    return True
            time.sleep(0.1)
        return False

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Its exit status; it has to exit (a generous deadline, not a measure)."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=90)

    def scrm(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "shared.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.strip().splitlines()[-1]


def test_up_on_embedded_servers_keeps_data_across_restarts(data_dir: Path) -> None:
    up = Up(data_dir)
    up.start()
    ready = httpx.get(f"{up.url}/readyz").json()
    assert ready == {"status": "ready", "database": "ok", "redis": "ok"}
    # One API process and a worker process per service; the users one dispatches; the
    # campaigns' priority loops (the welcome lane) have one of their own.
    assert up.proc is not None
    parts = sorted(
        " ".join(child.cmdline()[3:])
        for child in psutil.Process(up.proc.pid).children()
        if "run-part" in child.cmdline()
    )
    assert parts == [
        "run-part --api",
        "run-part --service campaigns",
        "run-part --service campaigns --priority",
        "run-part --service points",
        "run-part --service tagging",
        "run-part --service users --dispatch",
    ]
    # Other commands use the running servers.
    assert up.scrm("tenant", "create", "kept-brand") == "kept-brand"
    key = up.scrm("apikey", "create", "--role", "platform")
    tenants = httpx.get(f"{up.url}/v1/admin/tenants", headers={"Authorization": f"Bearer {key}"})
    assert [t["slug"] for t in tenants.json()] == ["kept-brand"]

    assert up.stop(signal.SIGTERM) == 0
    assert embedded_processes(data_dir) == [], "the embedded servers stop with scrm up"

    up.start()
    again = httpx.get(f"{up.url}/v1/admin/tenants", headers={"Authorization": f"Bearer {key}"})
    assert again.status_code == 200, "the key and the secret behind it survived"
    assert [t["slug"] for t in again.json()] == ["kept-brand"]

    # A crash: the servers outlive scrm up; the next start re-attaches to them.
    up.stop(signal.SIGKILL)
    postgres_before = {p.pid for p in embedded_processes(data_dir) if p.name() == "postgres"}
    assert postgres_before, "postgres stays up after scrm up is SIGKILLed"
    assert up.port_freed(within=20), "the API process does not outlive its supervisor"
    up.start()
    assert httpx.get(
        f"{up.url}/v1/admin/tenants", headers={"Authorization": f"Bearer {key}"}
    ).json()
    postgres_after = {p.pid for p in embedded_processes(data_dir) if p.name() == "postgres"}
    assert postgres_before & postgres_after, "the same postmaster was re-attached"
    assert up.stop(signal.SIGINT) == 0
    assert embedded_processes(data_dir) == []


def test_commands_without_up_start_and_stop_the_servers(data_dir: Path) -> None:
    up = Up(data_dir)
    assert up.scrm("tenant", "create", "solo") == "solo"
    assert embedded_processes(data_dir) == [], "a one-off command leaves nothing running"
    assert "solo" in up.scrm("tenant", "list")
