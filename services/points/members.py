"""Who points may move for: a live contact of the tenant, asked of the users service;
and a batch of members' items split so that each member appears once per pass."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from services.points.exceptions import UnknownContact
from services.users import contact_status


async def require_live_member(
    session: AsyncSession, tenant_id: uuid.UUID, contact_id: uuid.UUID
) -> None:
    """Raise UnknownContact unless the contact is live (merged: use the survivor; erased:
    no more points, tiers or benefits)."""
    found = await contact_status(session, tenant_id, contact_id)
    if found != "active":
        raise UnknownContact(found)


T = TypeVar("T")


def in_passes(items: list[T], member: Callable[[T], uuid.UUID]) -> list[list[T]]:
    """A batch's items in passes where each member appears at most once: pass k holds
    each member's k-th item, in the batch's order. A member's later item may depend on
    what its earlier one changed (its tier), so it waits for the next pass."""
    passes: list[list[T]] = []
    seen: dict[uuid.UUID, int] = {}
    for item in items:
        k = seen.get(member(item), 0)
        seen[member(item)] = k + 1
        if k == len(passes):
            passes.append([])
        passes[k].append(item)
    return passes
