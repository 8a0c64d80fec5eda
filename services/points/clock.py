"""The points service's clock: bookings, expiries, holds and referral holds are timed at
`now()`, which tests move (never the system clock)."""

from __future__ import annotations

from shared.clock import Clock

_clock = Clock()
now = _clock.now
use = _clock.use
