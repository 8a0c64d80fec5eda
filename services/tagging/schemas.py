"""HTTP contract of the tagging service."""

from __future__ import annotations

from shared.service_status import ServiceStatus


class TaggingStatus(ServiceStatus):
    """Bus status of the tagging service for one tenant."""
