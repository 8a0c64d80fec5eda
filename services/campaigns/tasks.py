"""arq jobs and event handlers of the campaigns service.

Handlers register with `@subscribe("campaigns", "<event.type>")` and delayed jobs with
`@scheduled_job("campaigns")`; the service's worker (`scrm worker --service campaigns`)
runs them. Each takes ids or an event, loads what it needs and is idempotent.
"""

from __future__ import annotations
