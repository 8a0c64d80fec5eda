"""Domain errors of the points service (subclasses of the shared base)."""

from __future__ import annotations

from shared.errors import ScrmError


class PointsError(ScrmError):
    """Base of the points service's own errors."""

    code = "points_error"
