"""Jobs of the tagging service's segments part (sweeps, queues)."""

from __future__ import annotations
