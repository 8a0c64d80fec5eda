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

HANDLER_MODULES = (pipeline, profile_tasks, rules_tasks, segments_tasks, tags_tasks, wecom_tasks)
