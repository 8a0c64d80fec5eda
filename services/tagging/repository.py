"""Every SQL statement of the tagging service lives here (none of its own tables yet)."""

from __future__ import annotations
