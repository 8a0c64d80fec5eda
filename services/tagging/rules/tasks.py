"""Jobs of the tagging service's rules part (sweeps, queues)."""

from __future__ import annotations
