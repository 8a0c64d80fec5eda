"""Domain errors of the users service (subclasses of the shared base)."""

from __future__ import annotations

from shared.errors import ScrmError


class UsersError(ScrmError):
    """Base of the users service's own errors."""

    code = "users_error"


class WeComRejected(UsersError):
    """A WeCom callback that fails verification or decryption."""

    status_code = 400
    code = "wecom_rejected"
