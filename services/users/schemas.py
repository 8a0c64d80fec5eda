"""HTTP contract of the users service."""

from __future__ import annotations

from shared.service_status import ServiceStatus


class UsersStatus(ServiceStatus):
    """Bus status of the users service for one tenant."""
