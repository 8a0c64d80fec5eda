"""Real-server tests for shared.embedded (initdb + postgres + valkey-server from the wheels)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import pytest
import redis

from shared.embedded import EmbeddedServers, EmbeddedUrls

# Servers of their own on ports picked when they start: one test at a time.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("embedded-servers")]

REPO = Path(__file__).resolve().parents[2]
CHILD = (
    "import sys, time\n"
    "from pathlib import Path\n"
    "from shared.embedded import EmbeddedServers\n"
    "urls = EmbeddedServers(Path(sys.argv[1])).acquire()\n"
    "print(urls.database_url, flush=True)\n"
    "time.sleep(300)\n"
)


def _procs_mentioning(data_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE or proc.pid == os.getpid():
            continue
        if any(str(data_dir) in arg for arg in proc.info["cmdline"] or []):
            found.append(proc)
    return found


def _gone(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # A `mktemp -d`-style root (mode 0700) exercises the traversal grants for the unprivileged
    # postgres user. Not tmp_path: every pytest session started as root chmods
    # /tmp/pytest-of-root back to 0700, cutting that user off mid-test when sessions overlap.
    root = Path(tempfile.mkdtemp(prefix="scrm-embedded-test-"))
    path = root / "deeply" / "nested" / "data"
    yield path
    leftovers = _procs_mentioning(path)
    for proc in leftovers:  # safety net: never leak servers from a failed test
        proc.kill()
    shutil.rmtree(root, ignore_errors=True)
    assert not leftovers, f"processes left running: {leftovers}"


def sql(urls: EmbeddedUrls, query: str) -> list[Any]:
    async def run() -> list[Any]:
        conn = await asyncpg.connect(urls.database_url)
        try:
            if not query.lstrip().upper().startswith("SELECT"):
                await conn.execute(query)  # simple protocol: several statements allowed
                return []
            return [tuple(r) for r in await conn.fetch(query)]
        finally:
            await conn.close()

    return asyncio.run(run())


def rds(urls: EmbeddedUrls) -> redis.Redis:
    return redis.Redis.from_url(urls.redis_url, socket_timeout=5)


@contextmanager
def child_user(data_dir: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process that acquires the servers and then idles until killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(data_dir)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("postgresql://")
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_acquire_gives_working_servers(data_dir: Path) -> None:
    (data_dir / "pg").mkdir(parents=True)
    (data_dir / "pg" / "base").write_text("left by an interrupted initdb")
    servers = EmbeddedServers(data_dir)
    with servers as urls:
        assert urls.database_url.startswith("postgresql://postgres@127.0.0.1:")
        assert urls.database_url.endswith("/scrm")
        assert urls.redis_url.startswith("redis://127.0.0.1:")
        assert sql(urls, "SELECT current_database(), 1") == [("scrm", 1)]
        assert rds(urls).ping() is True
        st = servers.status()
        assert st["running"] is True
        assert st["users"] == [os.getpid()]
        assert {st["postgres_port"], st["valkey_port"]}.isdisjoint({5432, 6379})
        for key in ("postgres_pid", "valkey_pid"):  # own session: caller's Ctrl-C can't hit them
            pid = st[key]
            assert isinstance(pid, int)
            assert os.getsid(pid) != os.getsid(0)
        assert (data_dir / "embedded.json").is_file()
    assert servers.status()["running"] is False
    assert _gone(int(str(st["postgres_pid"])))
    assert _gone(int(str(st["valkey_pid"])))


def test_data_survives_restart(data_dir: Path) -> None:
    servers = EmbeddedServers(data_dir)
    urls = servers.acquire()
    sql(urls, "CREATE TABLE t (v text); INSERT INTO t VALUES ('kept')")
    rds(urls).set("job", "queued")
    st = servers.status()
    servers.release()
    assert _gone(int(str(st["postgres_pid"])))
    assert _gone(int(str(st["valkey_pid"])))

    urls2 = servers.acquire()
    try:
        assert urls2 == urls  # ports are remembered
        assert sql(urls2, "SELECT v FROM t") == [("kept",)]
        assert rds(urls2).get("job") == b"queued"
    finally:
        servers.release()


def test_other_live_user_keeps_servers_running(data_dir: Path) -> None:
    servers = EmbeddedServers(data_dir)
    urls = servers.acquire()
    with child_user(data_dir) as child:
        assert servers.status()["users"] == sorted([os.getpid(), child.pid])
        servers.release()
        assert servers.status()["users"] == [child.pid]
        assert rds(urls).ping() is True
        assert sql(urls, "SELECT 1") == [(1,)]
        child.send_signal(signal.SIGKILL)
        child.wait()
    # the child's lease is stale now: an acquire/release cycle prunes it and stops everything
    servers.acquire()
    assert servers.status()["users"] == [os.getpid()]
    servers.release()
    assert servers.status()["running"] is False


def test_reattach_after_sigkill(data_dir: Path) -> None:
    servers = EmbeddedServers(data_dir)
    with child_user(data_dir) as child:
        before = servers.status()
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert before["running"] is True
    urls = servers.acquire()
    after = servers.status()
    assert after["postgres_pid"] == before["postgres_pid"]
    assert after["valkey_pid"] == before["valkey_pid"]
    assert after["users"] == [os.getpid()]
    postmasters = [p for p in _procs_mentioning(data_dir) if p.name() == "postgres"]
    assert [p.pid for p in postmasters] == [before["postgres_pid"]]
    assert sql(urls, "SELECT 1") == [(1,)]
    assert rds(urls).ping() is True
    servers.release()
    assert _procs_mentioning(data_dir) == []


def test_stale_pid_files_are_recovered(data_dir: Path) -> None:
    servers = EmbeddedServers(data_dir)
    urls = servers.acquire()
    servers.release()
    dead = subprocess.Popen(["true"])
    dead.wait()
    bystander = subprocess.Popen(["sleep", "60"])  # live, but not one of our servers
    try:
        port = urls.database_url.rsplit(":", 1)[1].split("/")[0]
        (data_dir / "pg" / "postmaster.pid").write_text(
            f"{bystander.pid}\n{data_dir / 'pg'}\n{int(time.time())}\n{port}\n\n"
            "127.0.0.1\n  1234  5678\nready   \n"
        )
        (data_dir / "valkey" / "valkey.pid").write_text(f"{dead.pid}\n")
        with servers as urls2:
            assert sql(urls2, "SELECT 1") == [(1,)]
            assert rds(urls2).ping() is True
        assert bystander.poll() is None  # an unrelated process is never killed
        (data_dir / "pg" / "postmaster.pid").write_text(f"{dead.pid}\n{data_dir / 'pg'}\n")
        (data_dir / "valkey" / "valkey.pid").write_text(f"{bystander.pid}\n")
        with servers as urls3:
            assert sql(urls3, "SELECT 1") == [(1,)]
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
