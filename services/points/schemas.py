"""HTTP contract of the points service."""

from __future__ import annotations

from shared.service_status import ServiceStatus


class PointsStatus(ServiceStatus):
    """Bus status of the points service for one tenant."""
