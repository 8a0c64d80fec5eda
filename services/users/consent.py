"""Marketing consent: opt-out / opt-in per channel, with history.

The latest change for a channel, or for "all" channels, rules; a contact with
no change on record may be messaged (consent given when they added the staff
member or signed up). `may_message` is what every send asks first.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.users.models import ConsentChange
from shared.errors import InvalidInput
from shared.events import publish

CHANNELS = ("all", "wecom", "wecom_group", "moments", "sms", "in_app", "email", "webhook")


def check_channel(channel: str) -> str:
    if channel not in CHANNELS:
        raise InvalidInput(
            f"unknown channel {channel!r}; one of {', '.join(CHANNELS)}",
            details={"field": "channel"},
        )
    return channel


async def record(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    contact_id: uuid.UUID,
    *,
    channel: str,
    opted_in: bool,
    source: str,
    note: str | None = None,
) -> ConsentChange:
    """Record a consent change and tell the other services."""
    change = ConsentChange(
        tenant_id=tenant_id,
        contact_id=contact_id,
        channel=check_channel(channel),
        status="opted_in" if opted_in else "opted_out",
        source=source[:64],
        note=note,
    )
    session.add(change)
    await session.flush()
    await publish(
        session,
        "consent.changed",
        {"contact_id": str(contact_id), "channel": channel, "status": change.status},
        tenant_id=tenant_id,
    )
    return change


async def may_message(
    session: AsyncSession, tenant_id: uuid.UUID, contact_id: uuid.UUID, channel: str
) -> bool:
    """May this contact receive marketing messages on `channel`?"""
    latest = await session.scalar(
        select(ConsentChange.status)
        .where(
            ConsentChange.tenant_id == tenant_id,
            ConsentChange.contact_id == contact_id,
            ConsentChange.channel.in_((check_channel(channel), "all")),
        )
        .order_by(ConsentChange.id.desc())
        .limit(1)
    )
    return latest != "opted_out"


async def history(
    session: AsyncSession, tenant_id: uuid.UUID, contact_id: uuid.UUID
) -> Sequence[ConsentChange]:
    return (
        await session.scalars(
            select(ConsentChange)
            .where(ConsentChange.tenant_id == tenant_id, ConsentChange.contact_id == contact_id)
            .order_by(ConsentChange.id)
        )
    ).all()
