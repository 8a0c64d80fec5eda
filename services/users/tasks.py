"""Event handlers and jobs of the users service (run by `scrm worker --service users`)."""

from __future__ import annotations

import logging
import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from services.users import lifecycle, sync
from services.users.consumer import InboundConsumer
from services.users.settings import users_settings
from services.users.wecom_client import WeComApiError, WeComUnavailable
from shared.events import Event, subscribe_many
from shared.runtime import Runtime
from shared.scheduler import RetryLater, ScheduledWork, deferral_seconds, scheduled_job
from shared.statistics import keep_statistics_fresh
from shared.worker import worker_loop

GIVE_UP_AFTER_SECONDS = 7 * 86400

log = logging.getLogger("scrm.users.tasks")


@worker_loop("users")
def inbound_consumer(runtime: Runtime) -> InboundConsumer:
    """Stored callbacks and business events, claimed and applied by every users worker."""
    return InboundConsumer(runtime)


@subscribe_many("users", lifecycle.LIFECYCLE_CHANGED, name="users.follow_lifecycle")
async def follow_lifecycle(session: AsyncSession, events: list[Event]) -> None:
    """Contacts' lifecycle stages as the tagging service computes them (set-based)."""
    await lifecycle.follow(session, events)


@scheduled_job("users", "enrich_contact")
async def enrich_contact(session: AsyncSession, work: ScheduledWork) -> None:
    """Fetch a contact's details from WeCom. While the API is unreachable this fails
    and is retried with backoff; the contact exists meanwhile from the callback."""
    assert work.tenant_id is not None
    external = await sync.external_userid_of(
        session, work.tenant_id, uuid.UUID(work.args["contact_id"])
    )
    client = await sync.client_for(session, work.tenant_id, max_retries=1)
    if client is None or external is None:
        return  # no app secret configured (or the contact was erased): nothing to fetch
    async with client:
        try:
            data = await client.get_external_contact(external)
        except WeComApiError as exc:
            log.warning("contact %s not enriched: %s", work.args.get("contact_id"), exc)
            return
        except WeComUnavailable as exc:
            _wait_for_wecom(work, exc)
    await sync.apply_contact(session, work.tenant_id, data, data.get("follow_user") or [])


@scheduled_job("users", "sync_group")
async def sync_group(session: AsyncSession, work: ScheduledWork) -> None:
    """Reconcile a customer group's name and members with WeCom."""
    assert work.tenant_id is not None
    client = await sync.client_for(session, work.tenant_id, max_retries=1)
    if client is None:
        return
    async with client:
        try:
            chat = await client.get_group_chat(str(work.args["chat_id"]))
        except WeComApiError as exc:
            log.warning("group %s not synced: %s", work.args.get("chat_id"), exc)
            return
        except WeComUnavailable as exc:
            _wait_for_wecom(work, exc)
    await sync.apply_group(session, uuid.UUID(str(work.tenant_id)), chat)


def _wait_for_wecom(work: ScheduledWork, exc: WeComUnavailable) -> None:
    """WeCom is unreachable: try again later (for up to a week), not a failure."""
    if deferral_seconds(work, 0, cap=GIVE_UP_AFTER_SECONDS) >= GIVE_UP_AFTER_SECONDS:
        log.error("giving up on %s %s after a week: %s", work.job, dict(work.args), exc)
        return
    settings = users_settings()
    delay = deferral_seconds(
        work, settings.wecom_retry_base_seconds, cap=settings.wecom_retry_max_seconds
    )
    raise RetryLater(delay, str(exc))


# Floods of new contacts: the apply path's statements are planned from fresh statistics.
keep_statistics_fresh(
    "users", "contacts", "contact_identities", "contact_events", "contact_follows", "inbound_events"
)
