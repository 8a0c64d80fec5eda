"""Tables of the tagging service's wecom part."""

from __future__ import annotations
