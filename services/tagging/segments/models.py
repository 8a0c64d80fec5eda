"""Tables of the tagging service's segments part."""

from __future__ import annotations
