"""arq jobs and event handlers of the points service.

Handlers register with `@subscribe("points", "<event.type>")` and delayed jobs with
`@scheduled_job("points")`; the service's worker (`scrm worker --service points`)
runs them. Each takes ids or an event, loads what it needs and is idempotent.
"""

from __future__ import annotations
