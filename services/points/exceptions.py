"""Domain errors of the points service (subclasses of the shared base)."""

from __future__ import annotations

from shared.errors import Conflict, NotFound, ScrmError


class PointsError(ScrmError):
    """Base of the points service's own errors."""

    code = "points_error"


class InsufficientPoints(Conflict):
    """A debit larger than the balance: nothing was changed."""

    def __init__(self, wanted: int, balance: int) -> None:
        super().__init__(
            f"{wanted} points wanted, {balance} available",
            code="insufficient_points",
            details={"wanted": wanted, "balance": balance},
        )


class UnknownContact(NotFound):
    """Points move only for a live contact of the tenant."""

    def __init__(self, status: str) -> None:
        message = {
            "missing": "no such contact",
            "erased": "this contact was erased",
        }.get(status, f"this contact was merged into {status.removeprefix('merged:')}")
        super().__init__(message, code="contact_not_found", details={"status": status})


class BenefitRefused(Conflict):
    """A benefit claim that cannot be granted (tier, member quota, tenant-wide quota)."""

    def __init__(self, code: str, message: str, *, status: int = 409) -> None:
        super().__init__(message, code=code)
        self.status_code = status
