"""arq jobs and event handlers of the tagging service.

Handlers register with `@subscribe("tagging", "<event.type>")` and delayed jobs with
`@scheduled_job("tagging")`; the service's worker (`scrm worker --service tagging`)
runs them. Each takes ids or an event, loads what it needs and is idempotent.
"""

from __future__ import annotations
