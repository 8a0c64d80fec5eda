"""The tags rules write to that are named by an event's property: found, or created
on first use within the tenant's limit of tags (services.tagging.tags.service)."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from services.tagging.rules import repository
from services.tagging.tags import repository as tags_repository
from services.tagging.tags.service import MAX_TAGS_PER_TENANT

TagKey = tuple[uuid.UUID, int, str]  # (tenant, group, name)


async def ensure_tags(session: AsyncSession, wanted: Sequence[TagKey]) -> dict[TagKey, int]:
    """The tag id of each (tenant, group, name), created when missing; a name missing
    from the answer could not be created (its group is gone, or the tenant has as many
    tags as it may). A few statements, and none that lock when every tag exists."""
    found = await repository.find_tags(session, wanted)
    missing: dict[uuid.UUID, list[TagKey]] = defaultdict(list)
    for key in sorted(set(wanted) - set(found), key=lambda k: (str(k[0]), k[1], k[2])):
        missing[key[0]].append(key)
    if not missing:
        return found
    creating: list[TagKey] = []
    # Tenants in one order, so concurrent batches take their tag-count locks alike.
    for tenant_id in sorted(missing, key=str):
        # Held until commit: the tags API and other batches count after this one.
        room = MAX_TAGS_PER_TENANT - await tags_repository.count_tags_locked(session, tenant_id)
        creating += missing[tenant_id][: max(0, room)]
    await repository.insert_tags(session, creating)
    return {**found, **await repository.find_tags(session, creating)}
