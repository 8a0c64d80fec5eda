"""Jobs of the tagging service's wecom part (sweeps, queues)."""

from __future__ import annotations
