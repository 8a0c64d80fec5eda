"""The tagging service's consumer: one set-based handler for every event it reads.

A batch of events (up to shared.worker.MANY_BATCH_SIZE, one transaction, each
event at most once: shared.events.subscribe_many) goes through the parts in a
fixed order, each with a few statements for the whole batch:

1. profile.ingest: the read model (profiles, event counts by day, events with
   properties, group memberships, consent, points tier; merges and erasure), and
   the contacts' events resolved to live contacts;
2. tags: merges and erasure of contact tags;
3. rules: the tag rules that the batch's events fire, once per source event;
4. profile.lifecycle / profile.scores: stages, RFM and health of the contacts
   whose facts changed;
5. segments: those contacts re-evaluated against the segments that read a
   changed fact; entries and exits published.

Every part records what it changed in a `Changes` (services/tagging/facts.py),
so each later part looks only at what changed.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from services.tagging import clock
from services.tagging.facts import Changes
from services.tagging.profile import ingest, lifecycle, scores
from services.tagging.rules import engine as rules_engine
from services.tagging.segments import live
from services.tagging.segments import repository as segments_repository
from services.tagging.tags import follow as tags_follow
from shared.events import Event, subscribe_many

# The business events the read model counts (profile/ingest.py says which), and the
# brands' own events, custom.<name>.
BUSINESS_EVENTS = (*sorted(ingest.COUNTED - {"referral.succeeded"}), "custom.*")
CONTACT_EVENTS = (
    "contact.added",
    "contact.half_added",
    "contact.updated",
    "contact.profile_changed",
    "contact.imported",
    "contact.removed_by_staff",
    "contact.lost",
    "contact.merged",
    "contact.erased",
    "consent.changed",
    "group.joined",
    "group.left",
    "group.dismissed",
    "tier.changed",
    "referral.succeeded",
)
CONSUMED = BUSINESS_EVENTS + CONTACT_EVENTS


@subscribe_many("tagging", *CONSUMED, name="tagging.apply_events", gather=True)
async def apply_events(session: AsyncSession, events: list[Event]) -> None:
    """Apply a batch of events to the tagging service's model, in the parts' order."""
    now = clock.now()
    changes = Changes()
    # Every statement of the batch is about the batch's contacts: lookups by key.
    async with segments_repository.planned_as_lookups(session):
        applied = await ingest.apply(session, events, changes, now)
        await tags_follow.apply(session, events, changes, now)
        await rules_engine.apply(session, applied, changes, now)
        await lifecycle.recompute(session, changes, now)
        await scores.recompute(session, changes, now)
        await live.reevaluate(session, changes, now)
