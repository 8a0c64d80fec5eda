"""Domain errors of the tagging service (subclasses of the shared base)."""

from __future__ import annotations

from shared.errors import ScrmError


class TaggingError(ScrmError):
    """Base of the tagging service's own errors."""

    code = "tagging_error"
