"""Tables of the tagging service's rules part: a tenant's tag rules, which of them fired
on which source event, and the tenants whose default rules are installed."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from shared.db import Base, TenantScoped, utcnow_column

RULE_ACTIONS = ("raise", "set")
RULE_STATUSES = ("active", "paused")
FIRING_OUTCOMES = ("fired", "skipped")


class TagRule(TenantScoped, Base):
    """When `event_type` (with `where` on its properties) happened at least `min_count`
    times within `window_days`, raise the target tag by `weight` (up to `cap`) or set
    it to `weight`. The target is `tag_id`, or the tag of `group_id` named after the
    event's `from_property` (created on first use)."""

    __tablename__ = "tag_rules"
    __table_args__ = (
        UniqueConstraint("tenant_id", "name", name="uq_tag_rules_name"),
        # Each default rule once per tenant (an edited one keeps its key).
        Index(
            "uq_tag_rules_default_key",
            "tenant_id",
            "default_key",
            unique=True,
            postgresql_where=text("default_key IS NOT NULL"),
        ),
        # The engine loads a batch's rules by tenant and event type.
        Index("ix_tag_rules_event", "tenant_id", "event_type"),
        CheckConstraint(
            "(tag_id IS NOT NULL AND group_id IS NULL AND from_property IS NULL)"
            " OR (tag_id IS NULL AND group_id IS NOT NULL AND from_property IS NOT NULL)",
            name="one_target",
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    event_type: Mapped[str] = mapped_column(String(100))
    # Equality on the event's properties: {"category": "tea"}.
    where: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    min_count: Mapped[int] = mapped_column(Integer, server_default="1")
    # None: every occurrence counts (min_count is then 1).
    window_days: Mapped[int | None] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(8), server_default="raise")
    weight: Mapped[float] = mapped_column(Float)
    cap: Mapped[float | None] = mapped_column(Float)
    tag_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("tags.id", ondelete="CASCADE")
    )
    group_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("tag_groups.id", ondelete="CASCADE")
    )
    from_property: Mapped[str | None] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16), server_default="active")
    # Set on the rules installed as SPEC §2's defaults.
    default_key: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = utcnow_column()
    updated_at: Mapped[datetime] = utcnow_column()


class TagRuleFiring(Base):
    """A rule fired (or was skipped, with why) on a source event: once, whatever the
    number of deliveries, replays or batches that see the event."""

    __tablename__ = "tag_rule_firings"
    __table_args__ = (
        Index("ix_tag_rule_firings_contact", "tenant_id", "contact_id"),
        # A rule's firings page by id.
        Index("ix_tag_rule_firings_rule_id", "rule_id", "id", unique=True),
    )

    # In the order recorded: what a rule's firings page by.
    id: Mapped[int] = mapped_column(BigInteger, Identity())
    rule_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("tag_rules.id", ondelete="CASCADE"), primary_key=True
    )
    source_event_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    tenant_id: Mapped[uuid.UUID]
    contact_id: Mapped[uuid.UUID]
    # The tag written (None when skipped).
    tag_id: Mapped[int | None] = mapped_column(BigInteger)
    outcome: Mapped[str] = mapped_column(String(16))
    # Why it was skipped: tag_name_empty, tag_name_too_long, property_missing...
    reason: Mapped[str | None] = mapped_column(String(32))
    fired_at: Mapped[datetime]


class TagRuleTenant(Base):
    """A tenant whose default rules (and the groups they need) were installed: once,
    so a default that ops deleted stays deleted."""

    __tablename__ = "tag_rule_tenants"

    tenant_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    defaults_installed_at: Mapped[datetime] = utcnow_column()
