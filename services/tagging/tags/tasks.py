"""Jobs of the tagging service's tags part: the drop sweep of decayed contact tags."""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict

from sqlalchemy.ext.asyncio import AsyncSession

from services.tagging import clock
from services.tagging.facts import Changes
from services.tagging.segments import live
from services.tagging.tags import repository, service
from services.tagging.tags.writes import TagWrite, apply_tag_writes
from shared.events import Event, subscribe_many
from shared.scheduler import ScheduledWork, recurring_job

log = logging.getLogger("scrm.tagging.tags")

# Rows per statement, and statements per run: what is left goes at the next run.
SWEEP_BATCH = 5000
SWEEP_ROUNDS = 10


@recurring_job("tagging", "drop_decayed_tags", every_seconds=60)
async def drop_decayed_tags(session: AsyncSession, work: ScheduledWork) -> None:
    """Remove the contact tags whose decayed weight fell below their group's floor
    (tag.removed, reason "decayed"): only the rows due, through the drops_at index."""
    dropped = await service.sweep_decayed(
        session, clock.now(), batch=SWEEP_BATCH, rounds=SWEEP_ROUNDS
    )
    if dropped:
        log.info("decayed tags dropped", extra={"dropped": dropped})


@subscribe_many("tagging", "campaign.tag_requested", name="tagging.apply_campaign_tags")
async def apply_campaign_tags(session: AsyncSession, events: list[Event]) -> None:
    """A journey's add_tag / remove_tag steps, applied with the source `campaign` (the
    contacts the read model does not know as live are left alone)."""
    by_tenant: dict[uuid.UUID, list[TagWrite]] = defaultdict(list)
    for event in events:
        payload = event.payload
        try:
            contact = uuid.UUID(str(payload["contact_id"]))
            tag_id = int(payload["tag_id"])
        except (KeyError, TypeError, ValueError):
            continue
        if event.tenant_id is None:
            continue
        weight = payload.get("weight")
        if payload.get("action") == "remove":
            write = TagWrite(contact, tag_id, "remove", source="campaign")
        elif isinstance(weight, int | float) and not isinstance(weight, bool):
            write = TagWrite(contact, tag_id, "set", float(weight), source="campaign")
        else:
            write = TagWrite(contact, tag_id, "ensure", source="campaign")
        by_tenant[event.tenant_id].append(write)
    now = clock.now()
    for tenant_id, writes in sorted(by_tenant.items()):
        live_ids = await repository.live_contacts(
            session, tenant_id, [w.contact_id for w in writes]
        )
        changes = Changes()
        await apply_tag_writes(
            session, tenant_id, [w for w in writes if w.contact_id in live_ids], changes, now
        )
        await live.reevaluate(session, changes, now)
