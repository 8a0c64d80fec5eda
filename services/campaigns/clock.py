"""The campaigns service's clock: versions, status changes, waits and sends are timed
at `now()`, which tests move (never the system clock)."""

from __future__ import annotations

from shared.clock import Clock

_clock = Clock()
now = _clock.now
use = _clock.use
