"""arq jobs, event handlers and worker loops of the campaigns service.

Handlers register with `@subscribe_many("campaigns", ...)` beside their rules and the
worker loops with `@worker_loop("campaigns")`; the service's worker
(`scrm worker --service campaigns`) runs them. Each is idempotent.
"""

from __future__ import annotations

from services.campaigns.enrolment import listeners, triggers
from services.campaigns.runner.loop import JourneyRunner
from services.campaigns.sends import notices
from services.campaigns.sends.dispatch import SendDispatcher
from services.campaigns.sends.wecom_mass import WeComMassQueue
from services.campaigns.sends.welcome_lane import WelcomeLane
from services.campaigns.staff.notices import StaffNotices
from shared.runtime import Runtime
from shared.worker import worker_loop

# Handlers defined beside their rules register when their module is imported.
HANDLER_MODULES = (listeners, notices, triggers)


@worker_loop("campaigns")
def journey_runner(runtime: Runtime) -> JourneyRunner:
    """Due enrolments taken through their steps, by every campaigns worker."""
    return JourneyRunner(runtime)


@worker_loop("campaigns")
def send_dispatcher(runtime: Runtime) -> SendDispatcher:
    """Planned sends handed to their channels, by every campaigns worker."""
    return SendDispatcher(runtime)


@worker_loop("campaigns")
def wecom_mass_queue(runtime: Runtime) -> WeComMassQueue:
    """WeCom mass messages and Moments tasks: bundled, called once, followed up."""
    return WeComMassQueue(runtime)


@worker_loop("campaigns", priority=True)
def welcome_lane(runtime: Runtime) -> WelcomeLane:
    """Welcome messages planned from the stored callbacks, ahead of their backlog."""
    return WelcomeLane(runtime)


@worker_loop("campaigns")
def staff_notices(runtime: Runtime) -> StaffNotices:
    """Staff told of their tasks, and of overdue ones, by WeCom app message."""
    return StaffNotices(runtime)
