"""JSON logs with a request id, and Prometheus metrics for requests and the bus."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import random
import sys
import time
import weakref
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "scrm_request_id", default=None
)

REGISTRY = CollectorRegistry(auto_describe=True)
_access_log = logging.getLogger("scrm.access")
_error_log = logging.getLogger("scrm.errors")

HTTP_REQUESTS = Counter(
    "scrm_http_requests_total",
    "HTTP requests answered",
    ["method", "route", "status"],
    registry=REGISTRY,
)
HTTP_LATENCY = Histogram(
    "scrm_http_request_duration_seconds",
    "Time from request start to the end of the response",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)


class InstallationCounter:
    """A counter of work done anywhere in the installation, not only in this process.

    The relay and the workers run in other processes (or pods) than the APIs
    that serve /metrics, so a process-local counter would show 0 where it is
    scraped. Each process adds its increments to a Redis hash (at most once a
    second, and before each scrape of its own /metrics); `/metrics` reads the
    hash. Every API replica therefore shows the same installation-wide total
    (aggregate with max, not sum); a Redis emptied without persistence starts
    it again from 0, which Prometheus reads as a counter reset.
    """

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._pending: dict[tuple[str, ...], int] = {}
        self._totals: dict[tuple[str, ...], float] = {}
        _INSTALLATION_COUNTERS.append(self)

    def labels(self, *values: str) -> _CounterChild:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}")
        return _CounterChild(self, tuple(values))

    def inc(self, amount: int = 1) -> None:
        self._add((), amount)

    def _add(self, values: tuple[str, ...], amount: int) -> None:
        if amount < 0:
            raise ValueError("counters only go up")
        self._pending[values] = self._pending.get(values, 0) + amount
        _schedule_counter_flush()

    def key(self, prefix: str) -> str:
        return f"{prefix}:metrics:{self.name}"

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=list(self.labelnames))
        for values, total in sorted(self._totals.items()):
            family.add_metric(list(values), total)
        yield family


class _CounterChild:
    def __init__(self, counter: InstallationCounter, values: tuple[str, ...]) -> None:
        self._counter = counter
        self._values = values

    def inc(self, amount: int = 1) -> None:
        self._counter._add(self._values, amount)


_INSTALLATION_COUNTERS: list[InstallationCounter] = []
# Where this process's increments go: bound by Runtime.open (count_in).
_counter_store: tuple[Any, str] | None = None
_counter_flush_scheduled = False
_counter_flushes: set[asyncio.Task[None]] = set()
_LABEL_SEPARATOR = "\x1f"


def count_in(redis: Any, prefix: str) -> None:
    """Send this process's installation counters to `redis` under `prefix` from now on."""
    global _counter_store
    _counter_store = (redis, prefix)


def _schedule_counter_flush() -> None:
    global _counter_flush_scheduled
    if _counter_flush_scheduled or _counter_store is None:
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return  # no loop: the next increment (or scrape) in one sends it
    _counter_flush_scheduled = True
    loop.call_later(1.0, _start_counter_flush)


def _start_counter_flush() -> None:
    global _counter_flush_scheduled
    _counter_flush_scheduled = False
    if _counter_store is None:
        return
    task = asyncio.get_running_loop().create_task(flush_counters(*_counter_store))
    _counter_flushes.add(task)
    task.add_done_callback(_counter_flushes.discard)


async def flush_counters(redis: Any, prefix: str) -> None:
    """Add this process's pending increments to the installation's totals in Redis."""
    taken = [(counter, counter._pending) for counter in _INSTALLATION_COUNTERS]
    if not any(pending for _, pending in taken):
        return
    for counter, _ in taken:
        counter._pending = {}
    try:
        pipe = redis.pipeline(transaction=False)
        for counter, pending in taken:
            for values, amount in pending.items():
                pipe.hincrby(counter.key(prefix), _LABEL_SEPARATOR.join(values), amount)
        await pipe.execute()
    except Exception as exc:
        # Kept for the next flush: a Redis outage delays the counts, it does not lose them.
        for counter, pending in taken:
            for values, amount in pending.items():
                counter._pending[values] = counter._pending.get(values, 0) + amount
        _error_log.warning("metrics: counters not sent to Redis: %s", exc)


async def read_counters(redis: Any, prefix: str) -> None:
    """Load the installation's totals (what /metrics shows) from Redis."""
    for counter in _INSTALLATION_COUNTERS:
        stored = await redis.hgetall(counter.key(prefix))
        totals: dict[tuple[str, ...], float] = {}
        for field, value in stored.items():
            text = field.decode() if isinstance(field, bytes) else str(field)
            values = tuple(text.split(_LABEL_SEPARATOR)) if counter.labelnames else ()
            if len(values) == len(counter.labelnames):
                totals[values] = float(value)
        counter._totals = totals


EVENTS_HANDLED = InstallationCounter(
    "scrm_events_handled",
    "Event deliveries by service and outcome (ok, duplicate, failed, dead), "
    "in every worker of the installation",
    ["service", "outcome"],
)
EVENTS_PUBLISHED = InstallationCounter(
    "scrm_events_published",
    "Outbox events published by the relays of the installation",
)
REGISTRY.register(EVENTS_HANDLED)
REGISTRY.register(EVENTS_PUBLISHED)
QUEUE_DEPTH = Gauge(
    "scrm_queue_depth", "Jobs waiting in a service's queue", ["service"], registry=REGISTRY
)
OUTBOX_PENDING = Gauge(
    "scrm_outbox_pending", "Committed events not yet published", registry=REGISTRY
)
OUTBOX_LAG = Gauge(
    "scrm_outbox_lag_seconds",
    "Age of the oldest committed event not yet published",
    registry=REGISTRY,
)
INBOUND_PENDING = Gauge(
    "scrm_inbound_pending",
    "Stored callbacks and webhook events not yet applied (dead letters aside)",
    registry=REGISTRY,
)
INBOUND_LAG = Gauge(
    "scrm_inbound_lag_seconds",
    "Age of the oldest stored callback or webhook event not yet applied",
    registry=REGISTRY,
)
DLQ_SIZE = Gauge("scrm_dlq_size", "Dead letters awaiting replay", registry=REGISTRY)
SCHEDULED_DUE = Gauge(
    "scrm_scheduled_jobs_overdue",
    "Scheduled jobs past due and not yet finished",
    registry=REGISTRY,
)


# Labelled children of the request metrics, looked up once per (method, route, status).
_REQUEST_METRICS: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def _request_metrics(method: str, route: str, status: int) -> tuple[Any, Any]:
    found = _REQUEST_METRICS.get((method, route, status))
    if found is None:
        found = (
            HTTP_REQUESTS.labels(method, route, str(status)),
            HTTP_LATENCY.labels(method, route),
        )
        _REQUEST_METRICS[(method, route, status)] = found
    return found


# Per app: id of each FastAPI route -> its full path template. A router included
# with a prefix keeps its routes' own paths ("/points/items" under "/v1"), and
# scope["route"] is that route: the full template comes from the app's routes.
_TEMPLATES: weakref.WeakKeyDictionary[Any, dict[int, str]] = weakref.WeakKeyDictionary()


def _app_templates(app: Any) -> dict[int, str]:
    from fastapi.routing import APIRoute, iter_route_contexts

    return {
        id(context.original_route): context.path_format or ""
        for context in iter_route_contexts(app.routes)
        if isinstance(context.original_route, APIRoute)
    }


def route_template(scope: Scope) -> str | None:
    """The full path template of the route that served `scope`
    (`/v1/contacts/{contact_id}`, `/docs`), or None when no route matched.

    Metrics label requests by it and the audit log names actions by it."""
    # The web framework is imported here, not with the module: workers and commands
    # log and count through this module without serving requests.
    from fastapi.routing import APIRoute
    from starlette.routing import Match, Mount, Route

    route = scope.get("route")
    app = scope.get("app")
    if isinstance(route, APIRoute):
        if app is None:
            return route.path
        templates = _TEMPLATES.get(app)
        found = templates.get(id(route)) if templates is not None else None
        if found is None:  # a route added since, or the first request
            templates = _app_templates(app)
            found = templates.setdefault(id(route), route.path)
            _TEMPLATES[app] = templates
        return found
    if route is not None:
        path = getattr(route, "path", None)  # a front door's label
        return path if isinstance(path, str) else None
    # Plain Starlette routes (the docs, the OpenAPI document, static files) leave no
    # route in the scope: find the one that answered.
    for candidate in getattr(app, "routes", ()):
        if isinstance(candidate, APIRoute) or not isinstance(candidate, Route | Mount):
            continue
        if candidate.matches(scope)[0] != Match.NONE:
            return candidate.path + "/{path}" if isinstance(candidate, Mount) else candidate.path
    return None


def current_request_id() -> str | None:
    return _request_id.get()


def bind_request_id(value: str | None) -> contextvars.Token[str | None]:
    return _request_id.set(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the request id of the request being served."""

    _skip = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "color_message"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = current_request_id()
        if request_id:
            entry["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in self._skip and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class BatchedStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes every record, but flushes at most every 100 ms (at once for warnings).

    A flush per line is a system call per request, a fifth of the cost of a
    callback at thousands per second; logging.shutdown flushes at exit.
    """

    interval = 0.1

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        self._last_flush = 0.0

    def flush(self) -> None:
        now = time.monotonic()
        if now - self._last_flush >= self.interval:
            self._last_flush = now
            super().flush()

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        if record.levelno >= logging.WARNING:
            self._last_flush = 0.0
            self.flush()


def configure_logging(level: str = "INFO") -> None:
    handler = BatchedStreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # uvicorn's own handlers would print a second, non-JSON line per request.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "arq", "arq.worker", "arq.jobs"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    logging.getLogger("arq.worker").setLevel(logging.WARNING)
    logging.getLogger("arq.jobs").setLevel(logging.WARNING)


class AccessSummary:
    """Successful requests of a high-volume route, logged as one line per route and
    status every `seconds` instead of one line each (the rest are logged each)."""

    def __init__(self, seconds: float = 10.0) -> None:
        self.seconds = seconds
        self._counts: dict[tuple[str, str, int], list[float]] = {}
        self._flush_scheduled = False

    def record(self, method: str, route: str, status: int, elapsed: float) -> None:
        entry = self._counts.get((method, route, status))
        if entry is None:
            self._counts[(method, route, status)] = [1, elapsed, elapsed]
        else:
            entry[0] += 1
            entry[1] += elapsed
            if elapsed > entry[2]:
                entry[2] = elapsed
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_later(self.seconds, self.flush)

    def flush(self) -> None:
        counts, self._counts = self._counts, {}
        self._flush_scheduled = False
        for (method, route, status), (n, total, slowest) in counts.items():
            _access_log.info(
                "%s %s %d x%d in %gs",
                method,
                route,
                status,
                n,
                self.seconds,
                extra={
                    "route": route,
                    "status": status,
                    "count": int(n),
                    "seconds": self.seconds,
                    "avg_ms": round(total / n * 1000, 2),
                    "max_ms": round(slowest * 1000, 2),
                },
            )


class RequestContextMiddleware:
    """Pure ASGI: request id in and out (X-Request-ID), request metrics per route, and
    an access log line per request (per route and interval for `summary` ones that
    succeed)."""

    def __init__(self, app: ASGIApp, summary: AccessSummary | None = None) -> None:
        self.app = app
        self.summary = summary

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                incoming = value.decode("latin-1")[:64]
                break
        # 128 random bits as hex, without uuid4's urandom system call per request.
        request_id = incoming or f"{random.getrandbits(128):032x}"
        token = bind_request_id(request_id)
        status = 500
        response_started = False
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                headers = list(message.get("headers", ()))
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # Answered here rather than by Starlette's outermost error middleware,
            # so the 500 still carries the request id (header, body and log).
            _error_log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if response_started:
                raise
            body = json.dumps(
                {
                    "error": {
                        "code": "internal_error",
                        "message": "internal error; the request id identifies it in the logs",
                        "details": {"request_id": request_id},
                    }
                }
            ).encode()
            await send_with_id(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send_with_id({"type": "http.response.body", "body": body})
        finally:
            elapsed = time.perf_counter() - started
            template = route_template(scope) or "unmatched"
            method = scope.get("method", "")
            requests, latency = _request_metrics(method, template, status)
            requests.inc()
            latency.observe(elapsed)
            if self.summary is not None and 200 <= status < 300:
                self.summary.record(method, template, status, elapsed)
            elif _access_log.isEnabledFor(logging.INFO):
                _access_log.info(
                    "%s %s %d",
                    method,
                    scope.get("path", ""),
                    status,
                    extra={"route": template, "status": status, "ms": round(elapsed * 1000, 2)},
                )
            _request_id.reset(token)
