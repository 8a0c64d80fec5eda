"""Role checks for the HTTP API.

Every endpoint names the roles it admits with `require(...)`; a mutating request
that passes is written to the audit log in the same transaction as its change.
Keys themselves (creation, hashing, the principal behind one) are shared.apikeys,
whose names this module also exports.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from shared.apikeys import (
    ALL_TENANT_ROLES,
    KEY_PREFIX,
    TENANT_ROLES,
    Principal,
    Role,
    audit_as,
    authenticate,
    check_role,
    create_api_key,
    generate_key,
    get_api_key,
    hash_key,
    list_api_keys,
    revoke_api_key,
)
from shared.deps import SessionDep
from shared.errors import Forbidden
from shared.observability import route_template

__all__ = [
    "ALL_TENANT_ROLES",
    "ANY_TENANT_ROLE",
    "KEY_PREFIX",
    "TENANT_ROLES",
    "AnyTenantPrincipal",
    "Principal",
    "Role",
    "audit_as",
    "authenticate",
    "check_role",
    "create_api_key",
    "generate_key",
    "get_api_key",
    "hash_key",
    "list_api_keys",
    "require",
    "revoke_api_key",
    "roles_required",
]

_MUTATING = {"POST", "PUT", "PATCH", "DELETE"}


# The roles each `require(...)` dependency admits, for the OpenAPI document.
_REQUIRED_ROLES: dict[Any, frozenset[Role]] = {}


def roles_required(dependency: Any) -> frozenset[Role] | None:
    """The roles a dependency made by `require` admits; None for any other callable."""
    return _REQUIRED_ROLES.get(dependency)


def require(*roles: Role) -> Any:
    """Dependency admitting only `roles`; audits mutating requests it admits."""
    allowed = frozenset(roles)

    async def dependency(request: Request, session: SessionDep) -> Principal:
        principal = await authenticate(session, request.headers.get("authorization"))
        if principal.role not in allowed:
            raise Forbidden(
                f"role {principal.role!r} may not do this",
                details={"allowed_roles": sorted(allowed)},
            )
        request.state.principal = principal
        if request.method in _MUTATING:
            template = route_template(request.scope) or request.url.path
            audit_as(
                session,
                request,
                principal,
                action=f"{request.method} {template}",
                target={k: str(v) for k, v in request.path_params.items()},
            )
        return principal

    _REQUIRED_ROLES[dependency] = allowed
    return Depends(dependency)


ANY_TENANT_ROLE = require(*TENANT_ROLES)
AnyTenantPrincipal = Annotated[Principal, ANY_TENANT_ROLE]
