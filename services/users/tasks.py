"""arq jobs and event handlers of the users service.

Handlers register with `@subscribe("users", "<event.type>")` and delayed jobs with
`@scheduled_job("users")`; the service's worker (`scrm worker --service users`)
runs them. Each takes ids or an event, loads what it needs and is idempotent.
"""

from __future__ import annotations
