"""Request and response bodies of the sends part."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SendStatus = Literal["planned", "deferred", "sending", "sent", "delivered", "skipped", "failed"]


class SendOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    campaign_id: int | None
    version: int | None
    step_id: str | None
    contact_id: uuid.UUID
    channel: str
    status: SendStatus
    reason: str | None = Field(
        description="Why it was skipped, deferred or failed: quota, cap, quiet_hours, consent, "
        "sensitive_word, review, rejected, missing_variable, erased, no_phone, not_on_wecom, "
        "no_welcome_code, welcome_code_expired, no_sms, no_group, not_friend, not_confirmed, "
        "provider_error, ..."
    )
    text: str | None = Field(description="The rendered message (a webhook's: none).")
    sender: str | None
    due_at: datetime
    attempts: int
    created_at: datetime
    sent_at: datetime | None
    delivered_at: datetime | None


class SendPage(BaseModel):
    items: list[SendOut]
    next_cursor: str | None


class InboxMessageOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    text: str
    created_at: datetime
    read_at: datetime | None


class InboxPage(BaseModel):
    items: list[InboxMessageOut]
    unread: int
    next_cursor: str | None


def send_out(row: Any) -> SendOut:
    content = row.content or {}
    return SendOut(
        id=row.id,
        campaign_id=row.campaign_id,
        version=row.version,
        step_id=row.step_id,
        contact_id=row.contact_id,
        channel=row.channel,
        status=row.status,
        reason=row.reason,
        text=content.get("text"),
        sender=row.sender,
        due_at=row.due_at,
        attempts=row.attempts,
        created_at=row.created_at,
        sent_at=row.sent_at,
        delivered_at=row.delivered_at,
    )
