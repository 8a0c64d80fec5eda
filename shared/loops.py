"""A worker loop that wakes on a Postgres NOTIFY channel and polls between notifications.

    class MyQueue(ListeningLoop):
        channel = "scrm_my_queue"

        async def step(self) -> int:  # do what is due now; how many items it handled
            ...

`run(stop)` calls `step` until a round handles nothing, then waits for a
notification on `channel` (sent at the commit of whatever makes work) or
`idle_poll_seconds`, whichever comes first. Without a LISTEN connection (Postgres
refused it) it polls only. A failing round is logged and retried after a second.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg  # type: ignore[import-untyped]

from shared.config import plain_postgres_url
from shared.relay import wait_any
from shared.runtime import Runtime

log = logging.getLogger("scrm.loops")


class ListeningLoop:
    channel: str = ""
    # Wait between rounds even when a round handled something (a lane that polls).
    always_wait = False

    def __init__(self, runtime: Runtime, *, idle_poll_seconds: float = 1.0) -> None:
        self.runtime = runtime
        self.idle_poll_seconds = idle_poll_seconds
        self._wake = asyncio.Event()
        self._listener: asyncpg.Connection | None = None

    async def step(self) -> int:
        raise NotImplementedError

    async def drain(self) -> int:
        """Run everything due now (tests, burst runs)."""
        total = 0
        while handled := await self.step():
            total += handled
        return total

    async def run(self, stop: asyncio.Event) -> None:
        await self._listen()
        name = type(self).__name__
        try:
            while not stop.is_set():
                wake = self._wake
                try:
                    handled = await self.step()
                except Exception:
                    log.exception("%s: a round failed; retrying in 1 s", name)
                    await wait_any(stop, None, 1.0)
                    await self._listen()
                    continue
                if not handled or self.always_wait:
                    await wait_any(stop, wake, self.idle_poll_seconds)
        finally:
            if self._listener is not None and not self._listener.is_closed():
                await self._listener.close()

    def _notified(self, *_: object) -> None:
        wake, self._wake = self._wake, asyncio.Event()
        wake.set()

    async def _listen(self) -> None:
        if not self.channel or (self._listener is not None and not self._listener.is_closed()):
            return
        try:
            conn = await asyncpg.connect(plain_postgres_url(self.runtime.database_url), timeout=5)
            await conn.add_listener(self.channel, self._notified)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            log.warning("%s: LISTEN unavailable (%s); polling only", type(self).__name__, exc)
            return
        self._listener = conn
