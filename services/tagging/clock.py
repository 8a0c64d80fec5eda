"""The tagging service's clock: decayed weights, time windows and lifecycle stages are
computed at `now()`, which tests move (never the system clock)."""

from __future__ import annotations

from shared.clock import Clock

_clock = Clock()
now = _clock.now
use = _clock.use
