"""Tables of the tagging service's tags part: tag groups, tags, the tags on contacts
and their history.

A contact tag stores the weight it had at `weighted_at`; its current weight is
computed, never rewritten: `tag_weight(weight, weighted_at, half_life_days, at)`
(a SQL function, migration 0010) = weight * 0.5^(age / half-life), or weight when
`half_life_days` is NULL (a group without decay, or a manual tag in a group whose
manual tags do not decay). `drops_at` is when that weight falls below the group's
floor: the drop sweep reads only rows due, through its index.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, Float, ForeignKey, Index, String, UniqueConstraint, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from shared.db import Base, TenantScoped, utcnow_column

GROUP_KINDS = ("basic", "consumption", "engagement", "interest", "custom")
TAG_SOURCES = ("manual", "rule", "import", "wecom")


class TagGroup(TenantScoped, Base):
    __tablename__ = "tag_groups"
    __table_args__ = (UniqueConstraint("tenant_id", "name", name="uq_tag_groups_name"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str] = mapped_column(String(30))
    kind: Mapped[str] = mapped_column(String(16), server_default="custom")
    # None: the group's tags do not decay.
    half_life_days: Mapped[float | None] = mapped_column(Float)
    floor: Mapped[float] = mapped_column(Float, server_default="0")
    # A contact holds at most one tag of an exclusive group.
    exclusive: Mapped[bool] = mapped_column(Boolean, server_default="false")
    # Manual tags decay only when the group says so.
    decay_manual: Mapped[bool] = mapped_column(Boolean, server_default="false")
    mirror_to_wecom: Mapped[bool] = mapped_column(Boolean, server_default="false")
    wecom_group_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = utcnow_column()
    updated_at: Mapped[datetime] = utcnow_column()


class Tag(TenantScoped, Base):
    __tablename__ = "tags"
    __table_args__ = (UniqueConstraint("tenant_id", "group_id", "name", name="uq_tags_name"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("tag_groups.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(30))
    wecom_tag_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = utcnow_column()
    updated_at: Mapped[datetime] = utcnow_column()


class ContactTag(Base):
    __tablename__ = "contact_tags"
    __table_args__ = (
        # A tag's holders in contact order (segments, pages of holders, deletes).
        Index("ix_contact_tags_tag", "tenant_id", "tag_id", "contact_id"),
        Index("ix_contact_tags_drops", "drops_at", postgresql_where=text("drops_at IS NOT NULL")),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    contact_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    tag_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("tags.id", ondelete="CASCADE"), primary_key=True
    )
    weight: Mapped[float] = mapped_column(Float)
    weighted_at: Mapped[datetime]
    half_life_days: Mapped[float | None] = mapped_column(Float)
    source: Mapped[str] = mapped_column(String(16))
    first_raised_at: Mapped[datetime]
    last_raised_at: Mapped[datetime]
    drops_at: Mapped[datetime | None]


class ContactTagHistory(Base):
    """Every change of a contact tag: added, raised, set, removed, with its cause."""

    __tablename__ = "contact_tag_history"
    __table_args__ = (
        Index("ix_contact_tag_history_contact", "tenant_id", "contact_id", "tag_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    tenant_id: Mapped[uuid.UUID]
    contact_id: Mapped[uuid.UUID]
    tag_id: Mapped[int] = mapped_column(BigInteger)
    action: Mapped[str] = mapped_column(String(16))
    weight: Mapped[float | None] = mapped_column(Float)
    source: Mapped[str] = mapped_column(String(16))
    cause: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    at: Mapped[datetime]
