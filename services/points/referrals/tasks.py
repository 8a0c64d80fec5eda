"""Event handlers of the referrals part."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from services.points.referrals import attribution, channel_codes
from shared.events import Event, subscribe_many


@subscribe_many(
    "points",
    "contact.added",
    name="points.attribute_channel_code",
    # Only adds through an inviter's channel code (State `ref-<code>`) are delivered.
    interest="o.payload->>'state' LIKE 'ref-%'",
)
async def attribute_channel_code(session: AsyncSession, events: list[Event]) -> None:
    """A customer added staff through an inviter's WeCom channel code."""
    for event in events:
        code = attribution.code_of_state(event.payload.get("state"))
        if code is None or event.tenant_id is None:
            continue
        try:
            invitee = uuid.UUID(str(event.payload["contact_id"]))
        except (KeyError, ValueError):
            continue
        await attribution.attribute(
            session,
            event.tenant_id,
            invitee,
            code,
            source="wecom",
            event_key=f"event:{event.id}",
            at=event.created_at,
        )


__all__ = ["channel_codes"]  # its job registers when this module is imported
