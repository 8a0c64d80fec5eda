"""Personal data in API output: masked unless the caller's role may read it.

Admins and operators read personal data; staff read it for the contacts they
own; analysts never do. Every unmasked read is audited by the caller through
`audit_unmasked_read`, in the request's transaction.
"""

from __future__ import annotations

import uuid
from typing import Literal

from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request

from shared.auth import Principal, audit_as

PersonalKind = Literal["phone", "name", "email", "identifier", "address"]


def mask(value: str, kind: PersonalKind) -> str:
    """A masked form that still lets ops tell records apart (138****1234, 张**)."""
    if not value:
        return value
    if kind == "phone":
        digits = value.strip()
        if len(digits) >= 7:
            return f"{digits[:3]}****{digits[-4:]}"
        return "*" * len(digits)
    if kind == "name":
        return value[0] + "*" * (len(value) - 1)
    if kind == "email":
        local, at, domain = value.partition("@")
        if not at:
            return mask(value, "identifier")
        return f"{local[:1]}***@{domain}"
    if kind == "address":
        return value[:6] + "****" if len(value) > 6 else "****"
    return f"{value[:4]}****{value[-4:]}" if len(value) > 10 else "****"


def may_unmask(principal: Principal, *, owner_staff_userid: str | None = None) -> bool:
    """Whether `principal` may read a contact's personal data unmasked."""
    if principal.role == "staff":
        return owner_staff_userid is not None and owner_staff_userid == principal.staff_userid
    return principal.may_read_personal_data


def present(
    value: str | None,
    kind: PersonalKind,
    principal: Principal,
    *,
    owner_staff_userid: str | None = None,
) -> str | None:
    """`value` as `principal` may see it."""
    if value is None:
        return None
    if may_unmask(principal, owner_staff_userid=owner_staff_userid):
        return value
    return mask(value, kind)


def audit_unmasked_read(
    session: AsyncSession,
    request: Request | None,
    principal: Principal,
    *,
    subject_type: str,
    subject_id: uuid.UUID | str,
    fields: list[str],
) -> None:
    """Record that `principal` read `fields` of a subject unmasked."""
    audit_as(
        session,
        request,
        principal,
        action=f"read_personal_data {subject_type}",
        target={"id": str(subject_id), "fields": ",".join(sorted(fields))},
    )
