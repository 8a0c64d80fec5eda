"""Tables of the tagging service's rules part."""

from __future__ import annotations
