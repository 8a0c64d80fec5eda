"""The tagging service's clock: decayed weights, time windows and lifecycle stages are
computed at `now()`, which tests move (never the system clock)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

_source: Callable[[], datetime] = lambda: datetime.now(UTC)  # noqa: E731


def now() -> datetime:
    return _source()


@contextmanager
def use(source: Callable[[], datetime]) -> Iterator[None]:
    """Run with `source` as the clock (tests: a simulated clock)."""
    global _source
    previous, _source = _source, source
    try:
        yield
    finally:
        _source = previous
