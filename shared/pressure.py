"""Acknowledgement before processing: workers give way while the API is flooded.

WeCom and the shops retry what is not acknowledged in time, so during a flood
of callbacks the API's answers matter more than how soon the events are
processed (they are stored and will be). An API process that stores more than
`SCRM_FLOOD_EVENTS_PER_SECOND` inbound events in a second raises a flag in
Redis (for two seconds, renewed while the flood lasts); every worker that sees
the flag paces its deliveries so that processing takes at most
`SCRM_FLOOD_WORKER_SHARE` of its time, leaving the cores and the database to
the acknowledgements. Nothing is skipped or reordered: the backlog is worked
off at full speed as soon as the flood ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from shared.runtime import Runtime

log = logging.getLogger("scrm.pressure")

FLAG_SECONDS = 2
MAX_PAUSE = 1.0


def flag_key(runtime: Runtime) -> str:
    return f"{runtime.settings.queue_prefix}:flood"


class FloodGauge:
    """API side: counts stored inbound events per second and raises the flag."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.threshold = runtime.settings.flood_events_per_second
        self._window = int(time.monotonic())
        self._count = 0
        self._raising: asyncio.Task[None] | None = None

    def note(self, events: int) -> None:
        if not self.threshold:
            return
        now = int(time.monotonic())
        if now != self._window:
            self._window, self._count = now, 0
        before = self._count
        self._count += events
        if before < self.threshold <= self._count and (
            self._raising is None or self._raising.done()
        ):
            self._raising = asyncio.create_task(self._raise(), name="flood-flag")

    async def _raise(self) -> None:
        try:
            await self.runtime.redis.set(flag_key(self.runtime), b"1", ex=FLAG_SECONDS)
        except Exception as exc:  # the flag is advisory: never fail a request for it
            log.warning("could not raise the flood flag: %s", exc)


class OutOfTime(Exception):
    """The unit of work could not start before its deadline (workers were giving way)."""


class FloodValve:
    """Worker side: while the flag is up, units of work run one at a time, each
    followed by a rest, so the worker processes for at most its share of the time."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        share = runtime.settings.flood_worker_share
        # Work w seconds, then rest w * (1 - share) / share: processing gets `share`.
        self.rest_per_work = (1 - share) / share if share < 1 else 0.0
        self._checked = 0.0
        self._flooded = False
        self._turn = asyncio.Lock()

    async def flooded(self) -> bool:
        now = time.monotonic()
        if now - self._checked >= 0.5:
            self._checked = now
            try:
                self._flooded = bool(await self.runtime.redis.exists(flag_key(self.runtime)))
            except Exception:
                self._flooded = False
        return self._flooded

    @asynccontextmanager
    async def paced(self, deadline: float) -> AsyncIterator[None]:
        """Around one unit of work; `deadline` is loop time (raises OutOfTime past it)."""
        if not self.rest_per_work or not await self.flooded():
            yield
            return
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(deadline):
                await self._turn.acquire()
        except TimeoutError:
            raise OutOfTime from None
        try:
            started = loop.time()
            yield
            # Resting with the turn held: no other job of this worker works meanwhile.
            await asyncio.sleep(min(MAX_PAUSE, (loop.time() - started) * self.rest_per_work))
        finally:
            self._turn.release()
