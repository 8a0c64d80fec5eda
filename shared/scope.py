"""Contact scope: which contacts a caller may read or change, on every service's routes.

A route keyed by a contact id takes the id through `contact_in_scope(...)`
instead of reading it from the path itself. The dependency answers 404
`not_found` for a contact that is not the caller's to see (unknown, another
tenant's, or for a staff key one its staff member neither owns nor follows),
exactly as for a missing one, before the route does anything.

Who may see which contact is the users service's rule; shared code does not
import services, so the users service registers its answer here when its
package is imported. Without one, every scoped request fails (500): a missing
resolver must never mean "everyone sees everything".
"""

# No `from __future__ import annotations`: the dependency below is defined inside a
# function that imports the web framework, and FastAPI reads its annotations as
# objects. The module itself imports none, so the users package can register its
# resolver without loading FastAPI (its commands do not serve requests).
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from shared.apikeys import Principal
from shared.errors import NotFound

ContactResolver = Callable[[AsyncSession, Principal, uuid.UUID], Awaitable[bool]]

_resolver: ContactResolver | None = None


def register_contact_resolver(resolver: ContactResolver) -> None:
    """Install the function that says whether a contact is in a principal's scope."""
    global _resolver
    _resolver = resolver


def registered_contact_resolver() -> ContactResolver | None:
    return _resolver


def contact_in_scope(principal_dependency: Any) -> Any:
    """A dependency giving the path's `contact_id` once it is checked to be in the scope
    of the caller that `principal_dependency` (the route's own `require(...)`)
    admits; FastAPI resolves that one dependency once for both."""
    from fastapi import Depends

    from shared.deps import SessionDep

    async def dependency(
        contact_id: uuid.UUID,
        session: SessionDep,
        principal: Principal = principal_dependency,
    ) -> uuid.UUID:
        resolver = _resolver
        if resolver is None:
            raise RuntimeError(
                "no contact scope resolver is registered (the users service registers it "
                "when services.users is imported)"
            )
        if not await resolver(session, principal, contact_id):
            raise NotFound("no such contact")
        return contact_id

    return Depends(dependency)
