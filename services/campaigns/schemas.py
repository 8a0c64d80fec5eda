"""HTTP contract of the campaigns service."""

from __future__ import annotations

from shared.service_status import ServiceStatus


class CampaignsStatus(ServiceStatus):
    """Bus status of the campaigns service for one tenant."""
