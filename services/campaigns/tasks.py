"""arq jobs, event handlers and worker loops of the campaigns service.

Handlers register with `@subscribe_many("campaigns", ...)` beside their rules and the
worker loops with `@worker_loop("campaigns")`; the service's worker
(`scrm worker --service campaigns`) runs them. Each is idempotent.
"""

from __future__ import annotations

from services.campaigns.enrolment import triggers

# Handlers defined beside their rules register when their module is imported.
HANDLER_MODULES = (triggers,)
