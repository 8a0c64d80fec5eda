"""The tagging service's event types (see shared/catalog.py): each part declares
those it publishes in its own events.py."""

from __future__ import annotations

from services.tagging.profile.events import EVENTS as PROFILE_EVENTS
from services.tagging.rules.events import EVENTS as RULES_EVENTS
from services.tagging.segments.events import EVENTS as SEGMENTS_EVENTS
from services.tagging.tags.events import EVENTS as TAGS_EVENTS
from services.tagging.wecom.events import EVENTS as WECOM_EVENTS
from shared.catalog import EventType

EVENTS: list[EventType] = [
    *TAGS_EVENTS,
    *RULES_EVENTS,
    *WECOM_EVENTS,
    *PROFILE_EVENTS,
    *SEGMENTS_EVENTS,
]
