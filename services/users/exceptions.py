"""Domain errors of the users service (subclasses of the shared base)."""

from __future__ import annotations

from shared.errors import ScrmError


class UsersError(ScrmError):
    """Base of the users service's own errors."""

    code = "users_error"
