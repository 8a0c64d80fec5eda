"""Acknowledgements first: the users workers on a machine hold back while its API
absorbs a flood.

A flood cannot be applied as fast as it is acknowledged, so applying it while
it lasts only takes CPU from the acknowledgements (and the database) and the
backlog is worked off afterwards either way. An API process that stores more
than `SCRM_INGEST_FLOOD_EVENTS_PER_SECOND` events in a second says so in Redis
under its machine's name, for a second at a time; the users workers of the same
machine then apply one batch per 5 seconds (per concurrent transaction) instead
of as many as they can, until a second passes without a report. Workers on
other machines (their own CPUs) are not affected. 0 turns this off.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable

from shared.runtime import Runtime

log = logging.getLogger("scrm.users.flood")

# How long one report lasts.
WINDOW_SECONDS = 1.0
# How often a flooded worker still applies a batch (so that the backlog of a flood
# that never ends still moves).
HOLD_SECONDS = 5.0


def flood_key(runtime: Runtime, host: str | None = None) -> str:
    return f"{runtime.settings.queue_prefix}:users:ingest-flood:{host or socket.gethostname()}"


class FloodMeter:
    """Counts what an API process stores; reports a flood at most once a quarter second."""

    def __init__(
        self,
        runtime: Runtime,
        events_per_second: int,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.runtime = runtime
        self.threshold = events_per_second
        self._clock = clock
        self._key = flood_key(runtime)
        self._window_start = float("-inf")
        self._count = 0
        self._reported_at = float("-inf")
        self._report: asyncio.Task[None] | None = None

    def stored(self, n: int) -> None:
        if not self.threshold:
            return
        now = self._clock()
        if now - self._window_start >= WINDOW_SECONDS:
            self._window_start, self._count = now, 0
        self._count += n
        if self._count > self.threshold and now - self._reported_at >= WINDOW_SECONDS / 4:
            self._reported_at = now
            if self._report is None or self._report.done():
                self._report = asyncio.get_running_loop().create_task(self._say_so())

    async def _say_so(self) -> None:
        try:
            await self.runtime.redis.set(self._key, b"1", px=int(WINDOW_SECONDS * 1000))
        except Exception as exc:  # only an optimisation: never in the way of a request
            log.warning("could not report the ingestion flood: %r", exc)

    def close(self) -> None:
        if self._report is not None:
            self._report.cancel()


async def flooded(runtime: Runtime, key: str) -> bool:
    """Whether an API process on this machine reported a flood within the last second."""
    try:
        return bool(await runtime.redis.exists(key))
    except Exception:
        return False
