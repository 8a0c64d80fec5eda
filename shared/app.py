"""The ASGI app: the routers of the chosen services plus the platform endpoints."""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from sqlalchemy import text
from starlette.types import ASGIApp, Receive, Scope, Send

from shared import admin_api
from shared.docs import install_docs
from shared.error_handlers import error_response, install_error_handlers
from shared.events import SERVICES
from shared.http_guard import RequestGuard
from shared.idempotency import ReplayedResponse
from shared.observability import (
    DLQ_SIZE,
    INBOUND_LAG,
    INBOUND_PENDING,
    OUTBOX_LAG,
    OUTBOX_PENDING,
    QUEUE_DEPTH,
    REGISTRY,
    SCHEDULED_DUE,
    AccessSummary,
    RequestContextMiddleware,
    flush_counters,
    read_counters,
)
from shared.openapi import error_responses, install_openapi
from shared.runtime import Runtime

log = logging.getLogger("scrm.app")

_BUS_GAUGES = text(
    """
    SELECT (SELECT count(*) FROM outbox_events WHERE published_at IS NULL),
           (SELECT COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)
              FROM outbox_events WHERE published_at IS NULL),
           (SELECT count(*) FROM dead_letters WHERE status = 'dead'),
           (SELECT count(*) FROM scheduled_jobs
             WHERE status IN ('pending','enqueued') AND due_at < now()),
           i.pending, i.lag
      FROM (SELECT count(*) AS pending,
                   COALESCE(EXTRACT(EPOCH FROM now() - min(received_at)), 0) AS lag
              FROM inbound_events
             WHERE processed_at IS NULL AND retry_at IS DISTINCT FROM 'infinity') i
    """
)


class FrontDoor(Protocol):
    """A service's hot endpoint, answered ahead of the framework (see ScrmApp)."""

    def matches(self, scope: Scope) -> bool: ...

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None: ...


class ScrmApp(FastAPI):
    """FastAPI, with front doors: HTTP requests a service's front door matches are
    served by it directly, inside the request context (request id, metrics,
    access log, error envelope) but ahead of FastAPI's middleware stack,
    routing and dependency resolution, which cost more than the work of a
    WeCom callback. Everything else takes the usual way."""

    def __init__(self, *, front_doors: Sequence[FrontDoor] = (), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Front doors take floods: their successes are logged as a summary line per
        # route every 10 s; anything else they answer is logged request by request.
        self.access_summary = AccessSummary()
        # Both ways pass the RequestGuard (NUL in the target, body size, JSON) inside
        # the request context: front doors here, FastAPI's routes through this
        # middleware, which the request context create_app adds later wraps.
        self.add_middleware(RequestGuard)
        self._front_doors: list[tuple[FrontDoor, ASGIApp]] = [
            (
                door,
                RequestContextMiddleware(RequestGuard(door, check_json=False), self.access_summary),
            )
            for door in front_doors
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for door, served in self._front_doors:
                if door.matches(scope):
                    scope["app"] = self
                    await served(scope, receive, send)
                    return
        await super().__call__(scope, receive, send)


def service_router(service: str) -> APIRouter:
    module = importlib.import_module(f"services.{service}.api")
    router: APIRouter = module.router
    return router


def create_app(services: Iterable[str] = SERVICES, runtime: Runtime | None = None) -> FastAPI:
    """Build the app; `runtime` is the process's connections (set by `scrm up`/tests)."""
    chosen = list(services)
    for name in chosen:
        if name not in SERVICES:
            raise ValueError(f"unknown service {name!r}; one of {', '.join(SERVICES)}")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if getattr(app.state, "runtime", None) is None:
            raise RuntimeError("create_app needs a Runtime (scrm serve/up provides one)")
        yield
        if isinstance(app, ScrmApp):
            app.access_summary.flush()  # the last interval's summary lines

    app = ScrmApp(
        front_doors=[
            door()
            for name in chosen
            for door in getattr(importlib.import_module(f"services.{name}.api"), "front_doors", [])
        ],
        title="scrm",
        version="0.1.0",
        description="Private-domain customer operations on WeCom: "
        + ", ".join(chosen)
        + " services.",
        lifespan=lifespan,
        # Served from packaged assets by install_docs, not from a CDN.
        docs_url=None,
        redoc_url=None,
    )
    app.state.runtime = runtime
    app.state.services = chosen
    install_docs(app)
    install_openapi(app)
    app.add_middleware(RequestContextMiddleware)
    install_error_handlers(app)

    async def replayed(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, ReplayedResponse)
        return JSONResponse(
            exc.body, status_code=exc.status_code, headers={"Idempotent-Replayed": "true"}
        )

    app.add_exception_handler(ReplayedResponse, replayed)

    app.include_router(admin_api.router)
    for name in chosen:
        app.include_router(service_router(name))

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["ops"],
        responses=error_responses(503, s503="`not_ready`: details name what is unreachable."),
    )
    async def readyz(request: Request) -> Response:
        rt: Runtime = request.app.state.runtime
        problems: dict[str, str] = {}
        try:
            async with asyncio.timeout(3):
                async with rt.engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
        except Exception as exc:
            problems["database"] = f"{type(exc).__name__}: {exc}"[:300]
        try:
            async with asyncio.timeout(3):
                await rt.redis.ping()
        except Exception as exc:
            problems["redis"] = f"{type(exc).__name__}: {exc}"[:300]
        if problems:
            return error_response(503, "not_ready", "a dependency is unreachable", problems)
        return JSONResponse({"status": "ready", "database": "ok", "redis": "ok"})

    @app.get("/metrics", tags=["ops"], response_class=PlainTextResponse)
    async def metrics(request: Request) -> Response:
        rt: Runtime = request.app.state.runtime
        await _refresh_bus_gauges(rt)
        await _refresh_installation_counters(rt)
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return app


async def _refresh_installation_counters(rt: Runtime) -> None:
    """Events published and handled by every process of the installation (the relay and
    the workers run elsewhere), this process's own increments included."""
    try:
        async with asyncio.timeout(3):
            await flush_counters(rt.redis, rt.settings.queue_prefix)
            await read_counters(rt.redis, rt.settings.queue_prefix)
    except Exception as exc:
        log.warning("metrics: event counters unavailable: %s", exc)


async def _refresh_bus_gauges(rt: Runtime) -> None:
    """Queue depth, outbox and inbound lag, DLQ size are read at scrape time, not tracked."""
    try:
        async with asyncio.timeout(3):
            async with rt.engine.connect() as conn:
                pending, lag, dead, overdue, inbound, inbound_lag = (
                    await conn.execute(_BUS_GAUGES)
                ).one()
            OUTBOX_PENDING.set(pending)
            OUTBOX_LAG.set(float(lag))
            DLQ_SIZE.set(dead)
            SCHEDULED_DUE.set(overdue)
            INBOUND_PENDING.set(inbound)
            INBOUND_LAG.set(float(inbound_lag))
            for service in SERVICES:
                QUEUE_DEPTH.labels(service).set(await rt.redis.zcard(rt.queue_name(service)))
    except Exception as exc:
        log.warning("metrics: bus gauges unavailable: %s", exc)
