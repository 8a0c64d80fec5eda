"""A service's clock: what it times is computed at `now()`, which tests move with
`use` (never the system clock). Each service keeps one (services/<name>/clock.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime


def _system() -> datetime:
    return datetime.now(UTC)


class Clock:
    def __init__(self) -> None:
        self._source: Callable[[], datetime] = _system

    def now(self) -> datetime:
        return self._source()

    @contextmanager
    def use(self, source: Callable[[], datetime]) -> Iterator[None]:
        """Run with `source` as the clock (tests: a simulated clock)."""
        previous, self._source = self._source, source
        try:
            yield
        finally:
            self._source = previous
