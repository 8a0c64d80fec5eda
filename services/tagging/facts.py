"""What changed about which contacts, as the tagging pipeline collects it.

Every part that changes a contact's facts (its tags, event counts, profile fields,
group memberships, segment memberships) records the change here; the segments
part then re-evaluates only those contacts, against only the segments whose rule
reads one of the changed facts.

A fact is a pair (kind, key):
- ("tag", "<tag id>")             a tag on the contact was added, removed or re-weighted
- ("event", "<event type>")       an event of the type was counted for the contact
- ("field", "<profile field>")    lifecycle_stage, rfm_cell, value_tier, points_tier,
                                  health_score, owner_staff, channel, created_at,
                                  consent (any channel), attributes (any key)
- ("group", "<chat id>")          the contact joined or left the customer group
- ("segment", "<segment id>")     the contact entered or left the segment (nesting)
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

Fact = tuple[str, str]

FIELDS = (
    "lifecycle_stage",
    "rfm_cell",
    "value_tier",
    "points_tier",
    "health_score",
    "owner_staff",
    "channel",
    "created_at",
    "consent",
    "attributes",
)


def tag_fact(tag_id: int) -> Fact:
    return ("tag", str(tag_id))


def event_fact(event_type: str) -> Fact:
    return ("event", event_type)


def field_fact(name: str) -> Fact:
    if name not in FIELDS:
        raise ValueError(f"unknown profile field {name!r}")
    return ("field", name)


def group_fact(chat_id: str) -> Fact:
    return ("group", chat_id)


def segment_fact(segment_id: int) -> Fact:
    return ("segment", str(segment_id))


@dataclass
class Changes:
    """Changed facts per tenant and contact, collected over one batch of work."""

    _by_tenant: dict[uuid.UUID, dict[uuid.UUID, set[Fact]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(set))
    )

    def add(self, tenant_id: uuid.UUID, contact_id: uuid.UUID, *facts: Fact) -> None:
        self._by_tenant[tenant_id][contact_id].update(facts)

    def add_many(
        self, tenant_id: uuid.UUID, contact_ids: Iterable[uuid.UUID], *facts: Fact
    ) -> None:
        contacts = self._by_tenant[tenant_id]
        for contact_id in contact_ids:
            contacts[contact_id].update(facts)

    def tenants(self) -> list[uuid.UUID]:
        return [t for t, contacts in self._by_tenant.items() if contacts]

    def contacts(self, tenant_id: uuid.UUID) -> dict[uuid.UUID, set[Fact]]:
        """The tenant's changed contacts and, for each, what changed."""
        return dict(self._by_tenant.get(tenant_id, {}))

    def take(self) -> Iterator[tuple[uuid.UUID, dict[uuid.UUID, set[Fact]]]]:
        """Each tenant's changes, emptied as they are handed out (re-evaluating
        segments may add ("segment", id) changes, which the next round takes)."""
        while True:
            tenants = self.tenants()
            if not tenants:
                return
            tenant_id = tenants[0]
            contacts = self._by_tenant.pop(tenant_id)
            yield tenant_id, dict(contacts)

    def __bool__(self) -> bool:
        return bool(self.tenants())
