"""Personal data in API output: masked unless the caller's role may read it.

Admins and operators read personal data; staff read it for the contacts they
own; analysts never do. Every unmasked read is audited, in the request's
transaction: `audit_unmasked_read` for one subject, `audit_unmasked_list` for
one list request (a page of contacts).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy.ext.asyncio import AsyncSession

from shared.apikeys import Principal, audit_as

if TYPE_CHECKING:
    from starlette.requests import Request

PersonalKind = Literal["phone", "name", "email", "identifier", "address"]


def mask(value: str, kind: PersonalKind) -> str:
    """A masked form that still lets ops tell records apart (138****1234, 张**).

    It never shows the whole value: at least one character is always hidden,
    however short the value (a one-character name is `*`, an email whose local
    part is one character or empty hides it or is masked as an identifier).
    """
    if not value:
        return value
    if kind == "phone":
        digits = value.strip()
        if len(digits) >= 8:
            # 138****1234 for 11 digits or more (+86138****1234 in E.164: the country
            # code does not count); shorter numbers give up leading digits so that at
            # least four stay hidden.
            shown = 6 if digits.startswith("+") else 3
            return f"{digits[: min(shown, len(digits) - 8)]}****{digits[-4:]}"
        return "*" * max(len(digits), 1)
    if kind == "name":
        if len(value) == 1:
            return "*"
        return value[0] + "*" * (len(value) - 1)
    if kind == "email":
        local, at, domain = value.partition("@")
        if not at or not local:
            return mask(value, "identifier")
        return f"{local[:1] if len(local) > 1 else ''}***@{domain}"
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


def audit_unmasked_list(
    session: AsyncSession,
    request: Request | None,
    principal: Principal,
    *,
    subject_type: str,
    subject_ids: Iterable[uuid.UUID | str],
    fields: list[str],
    filters: Mapping[str, Any],
) -> None:
    """Record that `principal` read `fields` of these subjects unmasked in one list
    request: one entry naming them, their count and the filters used (names only:
    a phone number searched for is personal data itself)."""
    ids = [str(i) for i in subject_ids]
    audit_as(
        session,
        request,
        principal,
        action=f"read_personal_data {subject_type}",
        target={
            "ids": ",".join(ids),
            "count": str(len(ids)),
            "fields": ",".join(sorted(fields)),
            "filters": ",".join(sorted(k for k, v in filters.items() if v)),
        },
    )
