"""Long-running processes: `scrm up` (everything), `scrm serve` (API), `scrm worker`.

All parts of a process share one asyncio loop and one Runtime. SIGINT/SIGTERM
set a stop event: the API stops accepting, workers stop picking jobs and finish
(or hand back) the ones they hold, the relay and scheduler leave their loops.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
from collections.abc import Generator, Sequence
from typing import Literal

import uvicorn
from arq.worker import Worker
from starlette.types import ASGIApp

from shared import migrate
from shared.app import create_app
from shared.config import Settings
from shared.events import load_subscriptions
from shared.http_server import http_protocol
from shared.relay import OutboxRelay
from shared.runtime import Runtime
from shared.scheduler import Scheduler, jobs
from shared.worker import build_worker, worker_loops

log = logging.getLogger("scrm.process")

WORKER_DRAIN_SECONDS = 8.0
WORKER_GC_THRESHOLDS = (20_000, 20, 20)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the process's stop event rules."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def api_server_config(app: ASGIApp, settings: Settings) -> uvicorn.Config:
    """How the API is served: uvicorn, with deadlines for receiving each request."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=http_protocol(settings),
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
        proxy_headers=True,
    )


def _install_stop_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


async def _watch_parent(stop: asyncio.Event) -> None:
    """A part of `scrm up` stops when its supervisor is gone (if PDEATHSIG is missing)."""
    parent = os.environ.get("SCRM_SUPERVISOR_PID")
    if not parent:
        return
    while not stop.is_set():
        if os.getppid() != int(parent):
            log.warning("the scrm up supervisor is gone; stopping")
            stop.set()
            return
        await asyncio.sleep(1)


async def run_process(
    settings: Settings,
    database_url: str,
    redis_url: str,
    *,
    api_services: Sequence[str],
    worker_services: Sequence[str],
    with_dispatch: bool,
    migrate_first: bool,
    stop: asyncio.Event | None = None,
    loops: Literal["all", "normal", "priority"] = "all",
) -> None:
    """Run the API for `api_services`, workers for `worker_services`, and optionally
    the outbox relay + scheduler, until SIGINT/SIGTERM (or `stop` is set). `loops`
    says which of the services' worker loops run here: `priority` runs those alone,
    without the services' queues."""
    stop = stop or asyncio.Event()
    _install_stop_signals(stop)
    runtime = await Runtime.open(settings, database_url, redis_url)
    try:
        if migrate_first:
            await migrate.upgrade(runtime.engine)
        registry = load_subscriptions(extra_modules=settings.extra_task_modules)
        tasks: list[asyncio.Task[None]] = []
        server: _Server | None = None
        if api_services:
            server = _Server(api_server_config(create_app(api_services, runtime), settings))
            tasks.append(asyncio.create_task(server.serve(), name="api"))
        workers: list[Worker] = [
            build_worker(runtime, service, registry, jobs)
            for service in (worker_services if loops != "priority" else ())
        ]
        worker_tasks = [
            asyncio.create_task(worker.main(), name=f"worker:{service}")
            for worker, service in zip(workers, worker_services, strict=False)
        ]
        tasks.extend(worker_tasks)
        chosen = {"all": None, "normal": False, "priority": True}[loops]
        for service in worker_services:
            for n, loop in enumerate(worker_loops(runtime, service, priority=chosen)):
                tasks.append(asyncio.create_task(loop.run(stop), name=f"loop:{service}:{n}"))
        if with_dispatch:
            tasks.append(
                asyncio.create_task(OutboxRelay(runtime, registry).run(stop), name="relay")
            )
            tasks.append(asyncio.create_task(Scheduler(runtime).run(stop), name="scheduler"))
        # Everything loaded so far (modules, the app, its routes and models) lives as
        # long as the process: keep it out of the collector's full passes, whose
        # pauses would otherwise stall every request in flight now and then.
        gc.collect()
        gc.freeze()
        if worker_services:
            # A batch builds and drops many short-lived objects (rows, events, their
            # parameters): collecting the young ones every 700 allocations cost a
            # worker about 6% of its time.
            gc.set_threshold(*WORKER_GC_THRESHOLDS)
        log.info(
            "scrm running",
            extra={
                "api": list(api_services),
                "workers": list(worker_services),
                "dispatch": with_dispatch,
                "address": f"http://{settings.host}:{settings.port}" if api_services else None,
            },
        )
        watchdog = asyncio.create_task(_watch_parent(stop), name="parent-watchdog")
        stopper = asyncio.create_task(stop.wait(), name="stop")
        done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not stopper and not task.cancelled() and task.exception() is not None:
                log.error("%s stopped unexpectedly", task.get_name(), exc_info=task.exception())
        stop.set()
        log.info("stopping")
        if server is not None:
            server.should_exit = True
        await asyncio.gather(*(_drain_worker(w) for w in workers))
        for task in worker_tasks:
            task.cancel()  # arq's poll loop; it holds no job any more
        watchdog.cancel()
        _, pending = await asyncio.wait(tasks, timeout=10)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    finally:
        await runtime.close()
    log.info("stopped")


async def _drain_worker(worker: Worker) -> None:
    """Stop picking jobs, give running ones a moment, then hand back the rest.

    A job cut off here stays in its queue (arq re-runs it), and every job is
    idempotent, so nothing is lost or done twice.
    """
    worker.allow_pick_jobs = False
    running = [t for t in worker.tasks.values() if not t.done()]
    if running:
        await asyncio.wait(running, timeout=WORKER_DRAIN_SECONDS)
    try:
        await worker.close()
    except Exception:
        log.exception("worker did not close cleanly")
