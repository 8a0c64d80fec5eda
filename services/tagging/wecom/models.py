"""Tables of the tagging service's wecom part: the queue of WeCom operations and the
corp tags as WeCom last showed them.

`wecom_tag_ops` is the only way this part talks to WeCom: every call (syncs, tag
definitions, mark_tag, a customer's tags fetched again) is a row, claimed with
`FOR UPDATE SKIP LOCKED` by the tagging workers, retried with backoff and kept as
a visible failure after its last attempt. Rows of one `serial_key` (a contact, or
the corp's tag definitions) run one at a time, in order. Triggers on `tags` and
`tag_groups` (migration 0012) enqueue the definition changes ops make in mirrored
groups, in the transaction that makes them.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from shared.db import Base, utcnow_column

OP_KINDS = ("sync", "fetch", "order", "push_tag", "push_group", "delete", "mark", "refetch")
OP_STATUSES = ("pending", "in_flight", "done", "failed")


class WeComTagOp(Base):
    __tablename__ = "wecom_tag_ops"
    __table_args__ = (
        CheckConstraint("status IN ('pending','in_flight','done','failed')", name="status"),
        # Finding the tenants with ops due reads one entry per tenant of this index.
        Index(
            "ix_wecom_tag_ops_due",
            "tenant_id",
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
        ),
        Index(
            "ix_wecom_tag_ops_in_flight",
            "lease_until",
            postgresql_where=text("status = 'in_flight'"),
        ),
        # Whether an op is the oldest unfinished one of its serial key: one probe.
        Index(
            "ix_wecom_tag_ops_serial",
            "tenant_id",
            "serial_key",
            "id",
            postgresql_where=text("status IN ('pending', 'in_flight')"),
        ),
        Index("ix_wecom_tag_ops_tenant_status", "tenant_id", "status", "id"),
        # One pending op per coalescing key: later changes join it.
        Index(
            "uq_wecom_tag_ops_pending",
            "tenant_id",
            "coalesce_key",
            unique=True,
            postgresql_where=text("status = 'pending' AND coalesce_key IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    tenant_id: Mapped[uuid.UUID]
    kind: Mapped[str] = mapped_column(String(16))
    # Ops of one key run one at a time, oldest first: "corp" or "contact:<id>".
    serial_key: Mapped[str] = mapped_column(String(80))
    coalesce_key: Mapped[str | None] = mapped_column(String(120))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    status: Mapped[str] = mapped_column(String(16), server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    next_attempt_at: Mapped[datetime] = utcnow_column()
    # An in-flight op whose worker died is claimable again after this.
    lease_until: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = utcnow_column()
    updated_at: Mapped[datetime] = utcnow_column()
    finished_at: Mapped[datetime | None]


class WeComCorpTag(Base):
    """A corp tag or tag group as WeCom last answered it, linked to the local one."""

    __tablename__ = "wecom_corp_tags"

    tenant_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    wecom_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # "group" or "tag"; a tag's group is wecom_group_id.
    kind: Mapped[str] = mapped_column(String(8))
    wecom_group_id: Mapped[str | None] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(64))
    sort_order: Mapped[int] = mapped_column(BigInteger, server_default="0")
    created_time: Mapped[int | None] = mapped_column(BigInteger)
    group_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("tag_groups.id", ondelete="SET NULL")
    )
    tag_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("tags.id", ondelete="SET NULL")
    )
    synced_at: Mapped[datetime] = utcnow_column()
