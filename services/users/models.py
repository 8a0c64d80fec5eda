"""Tables owned by the users service.

Personal data (names, phone numbers, unionids...) is stored only encrypted
(`*_enc`, AES-GCM with a key id, see shared.crypto) and found through keyed
blind indexes (`*_bidx`): a plain dump of these tables shows none of it.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from shared.db import Base, TenantScoped, utcnow_column

IDENTITY_KINDS = (
    "external_userid",
    "unionid",
    "openid",
    "phone",
    "shop_customer_id",
    "referral_code",
    "email",
)


class WeComSettings(Base):
    """A tenant's WeCom corp: callback token, EncodingAESKey and app secret, encrypted."""

    __tablename__ = "wecom_settings"

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    corp_id: Mapped[str] = mapped_column(String(64))
    token_enc: Mapped[bytes] = mapped_column(LargeBinary)
    aes_key_enc: Mapped[bytes] = mapped_column(LargeBinary)
    secret_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    updated_at: Mapped[datetime] = utcnow_column()


class WebhookSecret(Base, TenantScoped):
    """HMAC secrets for signed webhooks; at most two active at a time (rotation)."""

    __tablename__ = "webhook_secrets"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    secret_enc: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = utcnow_column()
    revoked_at: Mapped[datetime | None] = mapped_column()


class InboundEvent(Base, TenantScoped):
    """Everything an integration sent, as received, before processing.

    The dedupe key makes a retried or replayed delivery a no-op.
    """

    __tablename__ = "inbound_events"
    __table_args__ = (
        UniqueConstraint("tenant_id", "source", "dedupe_key", name="uq_inbound_events_dedupe"),
        CheckConstraint("source IN ('wecom','event','import')", name="source_known"),
        # Set by processing: rows are written without an entry here.
        Index(
            "ix_inbound_events_contact_id",
            "contact_id",
            postgresql_where=text("contact_id IS NOT NULL"),
        ),
        # What the users worker claims: only rows still to be applied.
        Index("ix_inbound_events_unprocessed", "id", postgresql_where=text("processed_at IS NULL")),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    # No index of its own: the dedupe key leads with it (every stored event writes
    # each index, on the acknowledgement's path).
    tenant_id: Mapped[uuid.UUID] = mapped_column()
    source: Mapped[str] = mapped_column(String(16))
    dedupe_key: Mapped[str] = mapped_column(String(300))
    type: Mapped[str] = mapped_column(String(100))
    # The raw event, encrypted (it names people); NULL once erased.
    payload_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    contact_id: Mapped[uuid.UUID | None] = mapped_column()
    received_at: Mapped[datetime] = utcnow_column()
    processed_at: Mapped[datetime | None] = mapped_column()
    outcome: Mapped[str | None] = mapped_column(String(100))
    # Failed applications: how many, when to try again ('infinity' once a dead letter).
    attempts: Mapped[int] = mapped_column(SmallInteger, server_default="0")
    retry_at: Mapped[datetime | None] = mapped_column()
    last_error: Mapped[str | None] = mapped_column(Text)


class Contact(Base, TenantScoped):
    """One end customer (one person, possibly many identities)."""

    __tablename__ = "contacts"
    __table_args__ = (
        Index("ix_contacts_tenant_created", "tenant_id", "created_at", "id"),
        Index("ix_contacts_name_grams", "name_grams", postgresql_using="gin"),
        CheckConstraint(
            "lifecycle_stage IN ('potential','new','active','silent','churned')",
            name="lifecycle_known",
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    # Blind-indexed bigrams of the normalised name: substring search without plaintext.
    name_grams: Mapped[list[bytes]] = mapped_column(
        ARRAY(LargeBinary), server_default=text("'{}'::bytea[]")
    )
    avatar_url: Mapped[str | None] = mapped_column(Text)
    gender: Mapped[int | None] = mapped_column(Integer)
    contact_type: Mapped[int | None] = mapped_column(Integer)  # WeCom: 1 WeChat user, 2 WeCom user
    corp_name: Mapped[str | None] = mapped_column(String(200))
    attributes: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    owner_staff_userid: Mapped[str | None] = mapped_column(String(64), index=True)
    channel_state: Mapped[str | None] = mapped_column(String(64))
    lifecycle_stage: Mapped[str] = mapped_column(String(16), server_default="potential", index=True)
    # When the stage took effect (the tagging service's `since`): older changes are stale.
    lifecycle_since: Mapped[datetime | None] = mapped_column()
    enriched_at: Mapped[datetime | None] = mapped_column()
    merged_into_id: Mapped[uuid.UUID | None] = mapped_column()
    erased_at: Mapped[datetime | None] = mapped_column()
    pseudonym: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = utcnow_column()
    updated_at: Mapped[datetime] = utcnow_column()


class ContactIdentity(Base, TenantScoped):
    """An identifier of a contact; unique per tenant and kind."""

    __tablename__ = "contact_identities"
    __table_args__ = (
        UniqueConstraint("tenant_id", "kind", "value_bidx", name="uq_contact_identities_value"),
        CheckConstraint(
            "kind IN ('external_userid','unionid','openid','phone','shop_customer_id',"
            "'referral_code','email')",
            name="kind_known",
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    contact_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("contacts.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(32))
    value_bidx: Mapped[bytes] = mapped_column(LargeBinary)
    value_enc: Mapped[bytes] = mapped_column(LargeBinary)
    source: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = utcnow_column()


class ContactFollow(Base, TenantScoped):
    """A staff member's relation to a contact (WeCom follow_user)."""

    __tablename__ = "contact_follows"
    __table_args__ = (
        UniqueConstraint("tenant_id", "contact_id", "staff_userid", name="uq_contact_follows_pair"),
        CheckConstraint(
            "status IN ('active','half','deleted_by_staff','deleted_by_contact')",
            name="status_known",
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    contact_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("contacts.id", ondelete="CASCADE"), index=True
    )
    staff_userid: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(24))
    remark: Mapped[str | None] = mapped_column(String(200))
    state: Mapped[str | None] = mapped_column(String(64))
    welcome_code: Mapped[str | None] = mapped_column(String(200))
    add_way: Mapped[int | None] = mapped_column(Integer)
    added_at: Mapped[datetime | None] = mapped_column()
    removed_at: Mapped[datetime | None] = mapped_column()
    updated_at: Mapped[datetime] = utcnow_column()


class Staff(Base, TenantScoped):
    """A WeCom member who owns contacts (跟进人)."""

    __tablename__ = "staff"
    __table_args__ = (UniqueConstraint("tenant_id", "userid", name="uq_staff_userid"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    userid: Mapped[str] = mapped_column(String(64))
    name: Mapped[str | None] = mapped_column(String(200))
    active: Mapped[bool] = mapped_column(server_default=text("true"))
    updated_at: Mapped[datetime] = utcnow_column()


class CustomerGroup(Base, TenantScoped):
    """A WeCom customer group chat."""

    __tablename__ = "customer_groups"
    __table_args__ = (UniqueConstraint("tenant_id", "chat_id", name="uq_customer_groups_chat"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    chat_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str | None] = mapped_column(String(200))
    owner_userid: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), server_default="active")
    member_count: Mapped[int] = mapped_column(Integer, server_default="0")
    created_at: Mapped[datetime] = utcnow_column()
    dismissed_at: Mapped[datetime | None] = mapped_column()
    updated_at: Mapped[datetime] = utcnow_column()


class GroupMember(Base, TenantScoped):
    """A member of a customer group: staff (type 1) or external contact (type 2)."""

    __tablename__ = "group_members"
    __table_args__ = (
        UniqueConstraint("tenant_id", "chat_id", "member_id", name="uq_group_members_member"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    chat_id: Mapped[str] = mapped_column(String(64))
    member_id: Mapped[str] = mapped_column(String(64))
    member_type: Mapped[int] = mapped_column(Integer)
    contact_id: Mapped[uuid.UUID | None] = mapped_column(index=True)
    joined_at: Mapped[datetime | None] = mapped_column()
    join_scene: Mapped[int | None] = mapped_column(Integer)
    left_at: Mapped[datetime | None] = mapped_column()


class ContactEvent(Base, TenantScoped):
    """A contact's timeline: what happened, when, from which source."""

    __tablename__ = "contact_events"
    __table_args__ = (
        Index("ix_contact_events_contact", "tenant_id", "contact_id", "occurred_at"),
        UniqueConstraint("tenant_id", "source", "source_event_id", name="uq_contact_events_source"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    contact_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(100))
    source: Mapped[str] = mapped_column(String(16))
    source_event_id: Mapped[str] = mapped_column(String(300))
    occurred_at: Mapped[datetime] = mapped_column()
    properties: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    created_at: Mapped[datetime] = utcnow_column()


class ContactMerge(Base, TenantScoped):
    """Two contacts found to be one person: the merged one now lives on in the survivor."""

    __tablename__ = "contact_merges"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    survivor_id: Mapped[uuid.UUID] = mapped_column(index=True)
    merged_id: Mapped[uuid.UUID] = mapped_column(unique=True)
    reason: Mapped[str] = mapped_column(Text)
    merged_at: Mapped[datetime] = utcnow_column()


class ConsentChange(Base, TenantScoped):
    """Marketing consent history per contact and channel; the latest row rules."""

    __tablename__ = "consent_changes"
    __table_args__ = (
        Index("ix_consent_changes_lookup", "tenant_id", "contact_id", "channel", "id"),
        CheckConstraint("status IN ('opted_in','opted_out')", name="status_known"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    contact_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"))
    channel: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(64))
    note: Mapped[str | None] = mapped_column(Text)
    changed_at: Mapped[datetime] = utcnow_column()
