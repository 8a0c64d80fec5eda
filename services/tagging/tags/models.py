"""Tables of the tagging service's tags part."""

from __future__ import annotations
