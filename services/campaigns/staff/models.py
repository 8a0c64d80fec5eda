"""Tables of the campaigns service's staff part.

`campaign_staff_tasks`: one task per unique `key` (`<enrolment>:<step>:<seq>`), for
the staff member who follows the contact. `kind` is `task` (a journey's create_task
step) or `wecom_mass` (a WeCom mass message the staff member confirms in their
client). A task is `open` until the staff member confirms it, and `overdue` once its
`due_at` passes unconfirmed.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from shared.db import Base, utcnow_column

TASK_STATUSES = ("open", "confirmed", "overdue", "cancelled")
TASK_KINDS = ("task", "wecom_mass")


class StaffTask(Base):
    __tablename__ = "campaign_staff_tasks"
    __table_args__ = (
        Index("uq_campaign_staff_tasks_key", "tenant_id", "key", unique=True),
        Index("ix_campaign_staff_tasks_staff", "tenant_id", "staff_userid", "id"),
        Index("ix_campaign_staff_tasks_campaign", "campaign_id", "id"),
        CheckConstraint(
            f"status IN ({', '.join(repr(s) for s in TASK_STATUSES)})", name="status_known"
        ),
        CheckConstraint(f"kind IN ({', '.join(repr(s) for s in TASK_KINDS)})", name="kind_known"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    tenant_id: Mapped[uuid.UUID]
    key: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16), server_default="task")
    campaign_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("campaigns.id", ondelete="CASCADE")
    )
    enrolment_id: Mapped[int | None] = mapped_column(BigInteger)
    step_id: Mapped[str | None] = mapped_column(String(64))
    contact_id: Mapped[uuid.UUID | None]
    staff_userid: Mapped[str | None] = mapped_column(String(64))
    title: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), server_default="open")
    due_at: Mapped[datetime]
    reminders: Mapped[int] = mapped_column(Integer, server_default="0")
    created_at: Mapped[datetime] = utcnow_column()
    confirmed_at: Mapped[datetime | None]
    # The WeCom app messages telling the staff member of it, and that it is overdue.
    notified_at: Mapped[datetime | None]
    reminded_at: Mapped[datetime | None]
