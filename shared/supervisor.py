"""A small process supervisor for `scrm up`: start the parts, restart a crashed one,
stop them all on SIGINT/SIGTERM (SIGKILL after a grace period)."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence

log = logging.getLogger("scrm.supervisor")

GRACE_SECONDS = 15.0
MAX_RESTARTS_PER_MINUTE = 5
PARENT_ENV = "SCRM_SUPERVISOR_PID"


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the child gets SIGTERM when the supervisor dies, even by SIGKILL."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass  # elsewhere the child's parent watchdog (shared.process) notices


def supervise(parts: Mapping[str, Sequence[str]], env: Mapping[str, str]) -> str | None:
    """Run `parts` (name -> command) until a stop signal; restart crashed ones.

    Returns None after a stop signal, or the name of the part that kept crashing
    (more than MAX_RESTARTS_PER_MINUTE restarts in a minute), after stopping the rest:
    the caller must not report that as a clean stop."""
    stopping = False
    gave_up: str | None = None

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    child_env = {**env, PARENT_ENV: str(os.getpid())}
    running: dict[str, subprocess.Popen[bytes]] = {}
    restarts: dict[str, list[float]] = {name: [] for name in parts}

    def start(name: str) -> None:
        running[name] = subprocess.Popen(
            list(parts[name]),
            env=child_env,
            preexec_fn=_die_with_parent,
        )
        log.info("started %s", name, extra={"pid": running[name].pid})

    try:
        for name in parts:
            start(name)
        while not stopping:
            time.sleep(0.2)
            for name, proc in list(running.items()):
                code = proc.poll()
                if code is None or stopping:
                    continue
                now = time.monotonic()
                restarts[name] = [t for t in restarts[name] if now - t < 60] + [now]
                if len(restarts[name]) > MAX_RESTARTS_PER_MINUTE:
                    log.error("%s keeps crashing (exit %s); stopping everything", name, code)
                    stopping = True
                    gave_up = name
                    break
                log.error("%s exited with %s; restarting it", name, code)
                start(name)
    finally:
        for proc in running.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + GRACE_SECONDS
        for name, proc in running.items():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in time; killing it", name)
                proc.kill()
                proc.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return gave_up
