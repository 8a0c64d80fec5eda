"""Domain errors of the campaigns service (subclasses of the shared base)."""

from __future__ import annotations

from shared.errors import ScrmError


class CampaignsError(ScrmError):
    """Base of the campaigns service's own errors."""

    code = "campaigns_error"
