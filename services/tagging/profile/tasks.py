"""Jobs of the tagging service's profile part (sweeps, queues)."""

from __future__ import annotations
