"""Journeys: the campaign contract (a trigger, then a graph of steps), its checks,
versions and the campaign's status (draft, live, paused, stopped)."""
