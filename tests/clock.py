"""Time that tests control: a clock that moves only when told, and waits on conditions.

A test never asserts how long something took: the code under test takes its
clock and its sleep as arguments, and the test moves that clock. Where a real
process or server has to do something, the test waits for the effect with a
generous deadline that only a broken build reaches.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Awaitable, Callable

# Long enough for a loaded 2-core machine; only reached when the awaited thing never happens.
DEADLINE_SECONDS = 60.0


class FakeClock:
    """A monotonic clock for `clock=` arguments and its `sleep` for `sleep=` arguments.

    `sleep(s)` returns once `advance()` has moved the clock `s` past the moment it
    was called; `slept` lists every duration asked for, in order.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._order = itertools.count()
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        woken = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._order), woken))
        await woken

    def advance(self, seconds: float) -> None:
        """Move the clock on and wake every sleeper whose time has come."""
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, woken = heapq.heappop(self._sleepers)
            if not woken.done():
                woken.set_result(None)

    @property
    def sleeping(self) -> int:
        """How many sleeps are waiting for the clock (cancelled ones not counted)."""
        return sum(1 for _, _, woken in self._sleepers if not woken.done())

    async def until_sleeping(self, count: int = 1) -> None:
        """Return once `count` sleeps wait for the clock (the code has reached them)."""
        await wait_until(lambda: self.sleeping >= count, f"{count} sleeper(s) on the clock")


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]],
    what: str,
    *,
    seconds: float = DEADLINE_SECONDS,
    every: float = 0.01,
) -> None:
    """Poll `condition` until it holds; fail naming `what` if it never does."""
    deadline = time.monotonic() + seconds
    while True:
        outcome = condition()
        if not isinstance(outcome, bool):
            outcome = await outcome
        if outcome:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(every)
