"""Event handlers and the worker loop of the tagging service's wecom part.

The handlers only enqueue (set-based, per batch): WeCom is called by the queue's
worker loop (queue.py), which every tagging worker process runs.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from services.tagging import clock
from services.tagging.facts import Changes
from services.tagging.segments import live
from services.tagging.wecom import service
from services.tagging.wecom.queue import WeComTagQueue
from shared.events import Event, subscribe_many
from shared.runtime import Runtime
from shared.worker import worker_loop


@worker_loop("tagging")
def wecom_tag_queue(runtime: Runtime) -> WeComTagQueue:
    """The queue of WeCom tag operations, claimed and run by every tagging worker."""
    return WeComTagQueue(runtime)


@subscribe_many("tagging", "tag.added", "tag.removed", name="tagging.wecom_mark_contact_tags")
async def mark_contact_tags(session: AsyncSession, events: list[Event]) -> None:
    """Contact tags of mirrored groups changed here: mark_tag them in WeCom."""
    await service.enqueue_contact_marks(session, events, clock.now())


@subscribe_many("tagging", "wecom.tag_changed", name="tagging.wecom_corp_tag_changed")
async def corp_tag_changed(session: AsyncSession, events: list[Event]) -> None:
    """change_external_tag callbacks: fetch what changed, remove what was deleted."""
    now = clock.now()
    changes = Changes()
    await service.apply_tag_changed(session, events, changes, now)
    await live.reevaluate(session, changes, now)


@subscribe_many("tagging", "contact.updated", name="tagging.wecom_refetch_contact_tags")
async def refetch_contact_tags(session: AsyncSession, events: list[Event]) -> None:
    """edit_external_contact: the customer's corp tags are fetched again."""
    await service.enqueue_refetches(session, events, clock.now())
