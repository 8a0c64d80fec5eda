"""arq jobs and event handlers of the tagging service (run by `scrm worker --service
tagging`): the set-based consumer of every event it reads (pipeline.py), and each
part's jobs (sweeps, the WeCom queue) in its tasks.py."""

from __future__ import annotations

from services.tagging import pipeline
from services.tagging.profile import tasks as profile_tasks
from services.tagging.rules import tasks as rules_tasks
from services.tagging.segments import tasks as segments_tasks
from services.tagging.tags import tasks as tags_tasks
from services.tagging.wecom import tasks as wecom_tasks
from shared.statistics import keep_statistics_fresh

HANDLER_MODULES = (pipeline, profile_tasks, rules_tasks, segments_tasks, tags_tasks, wecom_tasks)

# The read model grows with every event (a new tenant's by thousands a second): its
# per-batch statements must not be planned from a younger table's statistics.
keep_statistics_fresh(
    "tagging",
    "tagging_profiles",
    "tagging_event_days",
    "tagging_events",
    "tagging_orders",
    "tagging_group_members",
    "contact_tags",
    "contact_tag_history",
    "segment_members",
    "tag_rule_firings",
)
