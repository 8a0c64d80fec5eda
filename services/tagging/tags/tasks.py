"""Jobs of the tagging service's tags part (sweeps, queues)."""

from __future__ import annotations
