"""Every SQL statement of the users service."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, Select, func, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.users.models import (
    Contact,
    ContactEvent,
    ContactFollow,
    ContactIdentity,
    CustomerGroup,
    GroupMember,
    InboundEvent,
    Staff,
    WebhookSecret,
    WeComSettings,
)
from shared.events import NOTIFY_CHANNEL
from shared.models import DeadLetter

MAX_ACTIVE_WEBHOOK_SECRETS = 2


def secret_context(tenant_id: uuid.UUID) -> bytes:
    """AAD for a tenant's integration secrets: they decrypt only where they belong."""
    return b"tenant-secret:" + tenant_id.bytes + b":"


# -- integration settings -------------------------------------------------------------


async def wecom_settings(session: AsyncSession, tenant_id: uuid.UUID) -> WeComSettings | None:
    return await session.get(WeComSettings, tenant_id)


async def has_wecom_api(session: AsyncSession, tenant_id: uuid.UUID) -> bool:
    """Whether the tenant configured an app secret (so the WeCom API may be called)."""
    found = await session.scalar(
        select(WeComSettings.secret_enc.is_not(None)).where(WeComSettings.tenant_id == tenant_id)
    )
    return bool(found)


async def save_wecom_settings(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    *,
    corp_id: str,
    token_enc: bytes,
    aes_key_enc: bytes,
    secret_enc: bytes | None,
) -> None:
    values: dict[str, Any] = {
        "corp_id": corp_id,
        "token_enc": token_enc,
        "aes_key_enc": aes_key_enc,
        "updated_at": func.now(),
    }
    if secret_enc is not None:
        values["secret_enc"] = secret_enc
    await session.execute(
        insert(WeComSettings)
        .values(tenant_id=tenant_id, **values)
        .on_conflict_do_update(index_elements=[WeComSettings.tenant_id], set_=values)
    )


async def active_webhook_secrets(
    session: AsyncSession, tenant_id: uuid.UUID
) -> Sequence[WebhookSecret]:
    return (
        await session.scalars(
            select(WebhookSecret)
            .where(WebhookSecret.tenant_id == tenant_id, WebhookSecret.revoked_at.is_(None))
            .order_by(WebhookSecret.created_at.desc())
        )
    ).all()


async def add_webhook_secret(
    session: AsyncSession, tenant_id: uuid.UUID, secret_enc: bytes
) -> WebhookSecret:
    """Add a secret; beyond two active ones, the oldest is revoked (rotation)."""
    # Serialise rotations of one tenant so two at once cannot leave three active.
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
        {"k": f"webhook-secrets:{tenant_id}"},
    )
    secret = WebhookSecret(tenant_id=tenant_id, secret_enc=secret_enc)
    session.add(secret)
    await session.flush()
    active = await active_webhook_secrets(session, tenant_id)
    stale = [s.id for s in active[MAX_ACTIVE_WEBHOOK_SECRETS:]]
    if stale:
        await session.execute(
            update(WebhookSecret)
            .where(WebhookSecret.id.in_(stale))
            .values(revoked_at=datetime.now(UTC))
        )
    return secret


async def revoke_webhook_secret(
    session: AsyncSession, tenant_id: uuid.UUID, secret_id: uuid.UUID
) -> WebhookSecret | None:
    secret = await session.scalar(
        select(WebhookSecret).where(
            WebhookSecret.id == secret_id, WebhookSecret.tenant_id == tenant_id
        )
    )
    if secret is not None and secret.revoked_at is None:
        secret.revoked_at = datetime.now(UTC)
        await session.flush()
    return secret


async def list_webhook_secrets(
    session: AsyncSession, tenant_id: uuid.UUID
) -> Sequence[WebhookSecret]:
    return (
        await session.scalars(
            select(WebhookSecret)
            .where(WebhookSecret.tenant_id == tenant_id)
            .order_by(WebhookSecret.created_at.desc())
        )
    ).all()


# -- inbound events ---------------------------------------------------------------------


@dataclass
class StoredEvent:
    """What applying needs of a claimed inbound row; applying sets `contact_id`."""

    id: int
    tenant_id: uuid.UUID
    source: str
    dedupe_key: str
    payload_enc: bytes | None
    contact_id: uuid.UUID | None = None


_CLAIMED = (
    InboundEvent.id,
    InboundEvent.tenant_id,
    InboundEvent.source,
    InboundEvent.dedupe_key,
    InboundEvent.payload_enc,
)


def _claimable() -> Select[int, uuid.UUID, str, str, bytes | None]:
    # Through ix_inbound_events_unprocessed, in id order; rows other workers hold are
    # passed over (SKIP LOCKED), and so are those waiting for a retry.
    return (
        select(*_CLAIMED)
        .where(
            InboundEvent.processed_at.is_(None),
            or_(InboundEvent.retry_at.is_(None), InboundEvent.retry_at <= func.now()),
        )
        .order_by(InboundEvent.id)
        .with_for_update(skip_locked=True)
    )


async def claim_inbound(session: AsyncSession, limit: int) -> list[StoredEvent]:
    """Lock up to `limit` rows due to be applied, oldest first."""
    return [_stored(row) for row in await session.execute(_claimable().limit(limit))]


async def claim_inbound_row(session: AsyncSession, inbound_id: int) -> StoredEvent | None:
    """Lock one row if it is still due and no other worker holds it."""
    row = (await session.execute(_claimable().where(InboundEvent.id == inbound_id))).first()
    return None if row is None else _stored(row)


def _stored(row: Row[int, uuid.UUID, str, str, bytes | None]) -> StoredEvent:
    inbound_id, tenant_id, source, dedupe_key, payload_enc = row
    return StoredEvent(inbound_id, tenant_id, source, dedupe_key, payload_enc)


_MARK_APPLIED = text(
    """
    UPDATE inbound_events i
       SET processed_at = now(), outcome = a.outcome, contact_id = a.contact_id
      FROM unnest(CAST(:ids AS bigint[]), CAST(:outcomes AS text[]),
                  CAST(:contacts AS uuid[])) AS a(id, outcome, contact_id)
     WHERE i.id = a.id
    """
)


async def mark_inbound_applied(
    session: AsyncSession, applied: Sequence[tuple[StoredEvent, str]]
) -> None:
    """Mark claimed rows applied, with their outcomes: one statement, as the last of
    the transaction (see processing.apply_inbound)."""
    await session.execute(
        _MARK_APPLIED,
        {
            "ids": [row.id for row, _ in applied],
            "outcomes": [outcome[:100] for _, outcome in applied],
            "contacts": [row.contact_id for row, _ in applied],
        },
    )


async def requeue_inbound(session: AsyncSession, inbound_id: int) -> None:
    """A replayed dead letter: the row is due again, with a fresh round of attempts."""
    await session.execute(
        update(InboundEvent)
        .where(InboundEvent.id == inbound_id, InboundEvent.processed_at.is_(None))
        .values(attempts=0, retry_at=None, outcome=None)
    )


async def inbound_attempts(session: AsyncSession, inbound_id: int) -> int | None:
    """Failed attempts so far of a row still to be applied (locked), None if applied."""
    return await session.scalar(
        select(InboundEvent.attempts)
        .where(InboundEvent.id == inbound_id, InboundEvent.processed_at.is_(None))
        .with_for_update()
    )


async def record_inbound_failure(
    session: AsyncSession, inbound_id: int, error: str, *, retry_in: float | None
) -> InboundEvent | None:
    """Count a failed application; retried in `retry_in` seconds, or never (None: a
    dead letter, until replayed)."""
    retry_at = (
        text("'infinity'::timestamptz")
        if retry_in is None
        else func.now() + func.make_interval(0, 0, 0, 0, 0, 0, retry_in)
    )
    return await session.scalar(
        update(InboundEvent)
        .where(InboundEvent.id == inbound_id, InboundEvent.processed_at.is_(None))
        .values(
            attempts=InboundEvent.attempts + 1,
            last_error=error,
            retry_at=retry_at,
            outcome="dead" if retry_in is None else InboundEvent.outcome,
        )
        .returning(InboundEvent)
    )


async def bury_inbound(session: AsyncSession, row: InboundEvent, handler: str) -> None:
    """Record a dead letter for an inbound row (again, after a replay that failed too)."""
    values = {
        "tenant_id": row.tenant_id,
        "service": "users",
        "handler": handler,
        "inbound_event_id": row.id,
        "attempts": row.attempts,
        "last_error": row.last_error or "",
    }
    statement = insert(DeadLetter).values(**values)
    await session.execute(
        statement.on_conflict_do_update(
            constraint="uq_dead_letters_inbound_event",
            # A replay gave the row a fresh round of attempts: this round's count.
            set_={
                "attempts": statement.excluded.attempts,
                "last_error": statement.excluded.last_error,
                "status": "dead",
                "updated_at": func.now(),
            },
        )
    )


async def count_pending_inbound(session: AsyncSession, tenant_id: uuid.UUID) -> int:
    return int(
        await session.scalar(
            select(func.count())
            .select_from(InboundEvent)
            .where(
                InboundEvent.processed_at.is_(None),
                InboundEvent.tenant_id == tenant_id,
                InboundEvent.retry_at.is_distinct_from(text("'infinity'::timestamptz")),
            )
        )
        or 0
    )


async def count_inbound(session: AsyncSession, tenant_id: uuid.UUID, source: str) -> int:
    return int(
        await session.scalar(
            select(func.count())
            .select_from(InboundEvent)
            .where(InboundEvent.tenant_id == tenant_id, InboundEvent.source == source)
        )
        or 0
    )


# -- contacts and identities ------------------------------------------------------------


async def contact_ids_for(
    session: AsyncSession, tenant_id: uuid.UUID, identities: Sequence[tuple[str, bytes]]
) -> dict[tuple[str, bytes], uuid.UUID]:
    """Which contact each (kind, blind index) already belongs to."""
    if not identities:
        return {}
    rows = await session.execute(
        select(ContactIdentity.kind, ContactIdentity.value_bidx, ContactIdentity.contact_id).where(
            ContactIdentity.tenant_id == tenant_id,
            func.row(ContactIdentity.kind, ContactIdentity.value_bidx).in_(
                [func.row(k, b) for k, b in identities]
            ),
        )
    )
    return {(kind, bidx): contact_id for kind, bidx, contact_id in rows}


async def add_identity(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    contact_id: uuid.UUID,
    *,
    kind: str,
    value_bidx: bytes,
    value_enc: bytes,
    source: str,
) -> uuid.UUID:
    """Attach an identity; returns the contact that owns it (maybe another one, first)."""
    owner = await session.scalar(
        insert(ContactIdentity)
        .values(
            tenant_id=tenant_id,
            contact_id=contact_id,
            kind=kind,
            value_bidx=value_bidx,
            value_enc=value_enc,
            source=source,
        )
        .on_conflict_do_update(
            constraint="uq_contact_identities_value",
            # A no-op update so RETURNING answers the existing owner under a row lock.
            set_={"kind": ContactIdentity.kind},
        )
        .returning(ContactIdentity.contact_id)
    )
    assert isinstance(owner, uuid.UUID)
    return owner


PROFILE_CHANGED = "contact.profile_changed"
# contact.profile_changed with each contact's current profile facts, straight from its
# row (one statement however many): never names, phones or other personal data.
_PUBLISH_PROFILES = text(
    f"""
    INSERT INTO outbox_events (event_id, tenant_id, type, payload)
    SELECT gen_random_uuid(), c.tenant_id, '{PROFILE_CHANGED}',
           jsonb_build_object('contact_id', c.id::text, 'created_at', to_jsonb(c.created_at),
                              'owner_staff', c.owner_staff_userid, 'channel', c.channel_state,
                              'attributes', c.attributes)
      FROM unnest(CAST(:ids AS uuid[])) WITH ORDINALITY AS u(id, n)
      JOIN contacts c ON c.id = u.id
     WHERE c.merged_into_id IS NULL AND c.erased_at IS NULL
     ORDER BY u.n
    """
)


async def publish_profiles(session: AsyncSession, contact_ids: Sequence[uuid.UUID]) -> None:
    """Publish `contact.profile_changed` for these contacts (created, or their owner,
    channel or attributes changed), each once, with its current values."""
    ids = list(dict.fromkeys(contact_ids))
    if not ids:
        return
    await session.execute(_PUBLISH_PROFILES, {"ids": ids})
    # NOTIFY is transactional: the relay wakes when these events are committed.
    await session.execute(text(f"NOTIFY {NOTIFY_CHANNEL}"))


async def claim_owner(
    session: AsyncSession,
    contact_id: uuid.UUID,
    staff_userid: str | None,
    channel_state: str | None,
) -> bool:
    """Give the contact this owner and channel where it has none yet; True if that
    changed anything (its profile then changed)."""
    unset = [
        column.is_(None)
        for column, value in (
            (Contact.owner_staff_userid, staff_userid),
            (Contact.channel_state, channel_state),
        )
        if value is not None
    ]
    if not unset:
        return False
    changed = await session.scalar(
        update(Contact)
        .where(Contact.id == contact_id, or_(*unset))
        .values(
            owner_staff_userid=func.coalesce(Contact.owner_staff_userid, staff_userid),
            channel_state=func.coalesce(Contact.channel_state, channel_state),
            updated_at=func.now(),
        )
        .returning(Contact.id)
    )
    return changed is not None


async def lock_contact(
    session: AsyncSession, tenant_id: uuid.UUID, contact_id: uuid.UUID
) -> Contact | None:
    return await session.scalar(
        select(Contact)
        .where(Contact.id == contact_id, Contact.tenant_id == tenant_id)
        .with_for_update()
    )


async def get_contact(
    session: AsyncSession, tenant_id: uuid.UUID, contact_id: uuid.UUID
) -> Contact | None:
    return await session.scalar(
        select(Contact).where(Contact.id == contact_id, Contact.tenant_id == tenant_id)
    )


async def identities_of(
    session: AsyncSession, tenant_id: uuid.UUID, contact_id: uuid.UUID
) -> Sequence[ContactIdentity]:
    return (
        await session.scalars(
            select(ContactIdentity)
            .where(ContactIdentity.tenant_id == tenant_id, ContactIdentity.contact_id == contact_id)
            .order_by(ContactIdentity.id)
        )
    ).all()


async def follows_of(
    session: AsyncSession, tenant_id: uuid.UUID, contact_id: uuid.UUID
) -> Sequence[ContactFollow]:
    return (
        await session.scalars(
            select(ContactFollow)
            .where(ContactFollow.tenant_id == tenant_id, ContactFollow.contact_id == contact_id)
            .order_by(ContactFollow.id)
        )
    ).all()


async def upsert_follow(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    contact_id: uuid.UUID,
    staff_userid: str,
    **values: Any,
) -> str | None:
    """Create or update the staff-contact relation; returns its previous status."""
    previous = await session.scalar(
        select(ContactFollow.status)
        .where(
            ContactFollow.tenant_id == tenant_id,
            ContactFollow.contact_id == contact_id,
            ContactFollow.staff_userid == staff_userid,
        )
        .with_for_update()
    )
    changes = {k: v for k, v in values.items() if v is not None}
    changes["updated_at"] = func.now()
    await session.execute(
        insert(ContactFollow)
        .values(tenant_id=tenant_id, contact_id=contact_id, staff_userid=staff_userid, **changes)
        .on_conflict_do_update(constraint="uq_contact_follows_pair", set_=changes)
    )
    return previous


async def active_follow_count(
    session: AsyncSession, tenant_id: uuid.UUID, contact_id: uuid.UUID
) -> int:
    return int(
        await session.scalar(
            select(func.count())
            .select_from(ContactFollow)
            .where(
                ContactFollow.tenant_id == tenant_id,
                ContactFollow.contact_id == contact_id,
                ContactFollow.status.in_(("active", "half")),
            )
        )
        or 0
    )


async def add_timeline_event(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    contact_id: uuid.UUID,
    *,
    type: str,
    source: str,
    source_event_id: str,
    occurred_at: datetime,
    properties: dict[str, Any],
) -> bool:
    """Record a timeline entry once; False when this source event was already there."""
    inserted = await session.scalar(
        insert(ContactEvent)
        .values(
            tenant_id=tenant_id,
            contact_id=contact_id,
            type=type,
            source=source,
            source_event_id=source_event_id,
            occurred_at=occurred_at,
            properties=properties,
        )
        .on_conflict_do_nothing(constraint="uq_contact_events_source")
        .returning(ContactEvent.id)
    )
    return inserted is not None


# -- staff and groups ---------------------------------------------------------------------


async def upsert_staff(
    session: AsyncSession, tenant_id: uuid.UUID, userid: str, name: str | None = None
) -> None:
    """Record a staff member. Without a new name this takes no row lock: concurrent
    batches mention the same staff constantly and must not serialise on them."""
    statement = insert(Staff).values(
        tenant_id=tenant_id, userid=userid, **({"name": name} if name else {})
    )
    if name is None:
        await session.execute(statement.on_conflict_do_nothing(constraint="uq_staff_userid"))
        return
    await session.execute(
        statement.on_conflict_do_update(
            constraint="uq_staff_userid",
            set_={"name": name, "updated_at": func.now()},
            where=Staff.name.is_distinct_from(name),
        )
    )


async def upsert_group(
    session: AsyncSession, tenant_id: uuid.UUID, chat_id: str, **values: Any
) -> None:
    changes = {k: v for k, v in values.items() if v is not None}
    changes["updated_at"] = func.now()
    await session.execute(
        insert(CustomerGroup)
        .values(tenant_id=tenant_id, chat_id=chat_id, **changes)
        .on_conflict_do_update(constraint="uq_customer_groups_chat", set_=changes)
    )


async def group_member_ids(session: AsyncSession, tenant_id: uuid.UUID, chat_id: str) -> set[str]:
    rows = await session.scalars(
        select(GroupMember.member_id).where(
            GroupMember.tenant_id == tenant_id,
            GroupMember.chat_id == chat_id,
            GroupMember.left_at.is_(None),
        )
    )
    return set(rows)


async def join_group(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    chat_id: str,
    member_id: str,
    *,
    member_type: int,
    contact_id: uuid.UUID | None,
    joined_at: datetime | None,
    join_scene: int | None,
) -> bool:
    """Add a member (again, after leaving); False if already a member."""
    row = await session.scalar(
        insert(GroupMember)
        .values(
            tenant_id=tenant_id,
            chat_id=chat_id,
            member_id=member_id,
            member_type=member_type,
            contact_id=contact_id,
            joined_at=joined_at,
            join_scene=join_scene,
        )
        .on_conflict_do_update(
            constraint="uq_group_members_member",
            set_={
                "left_at": None,
                "joined_at": joined_at,
                "join_scene": join_scene,
                "contact_id": contact_id,
            },
            where=GroupMember.left_at.is_not(None),
        )
        .returning(GroupMember.id)
    )
    return row is not None


async def leave_group(
    session: AsyncSession, tenant_id: uuid.UUID, chat_id: str, member_id: str, at: datetime
) -> uuid.UUID | bool | None:
    """Mark a member gone; returns its contact id (None for staff), False if not a member."""
    row = (
        await session.execute(
            update(GroupMember)
            .where(
                GroupMember.tenant_id == tenant_id,
                GroupMember.chat_id == chat_id,
                GroupMember.member_id == member_id,
                GroupMember.left_at.is_(None),
            )
            .values(left_at=at)
            .returning(GroupMember.contact_id)
        )
    ).first()
    return False if row is None else row[0]


async def list_staff(session: AsyncSession, tenant_id: uuid.UUID) -> Sequence[Staff]:
    return (
        await session.scalars(
            select(Staff).where(Staff.tenant_id == tenant_id).order_by(Staff.userid)
        )
    ).all()


async def list_groups(
    session: AsyncSession, tenant_id: uuid.UUID, *, after_id: int | None, limit: int
) -> Sequence[CustomerGroup]:
    query = select(CustomerGroup).where(CustomerGroup.tenant_id == tenant_id)
    if after_id is not None:
        query = query.where(CustomerGroup.id > after_id)
    return (await session.scalars(query.order_by(CustomerGroup.id).limit(limit))).all()


async def get_group(
    session: AsyncSession, tenant_id: uuid.UUID, chat_id: str
) -> CustomerGroup | None:
    return await session.scalar(
        select(CustomerGroup).where(
            CustomerGroup.tenant_id == tenant_id, CustomerGroup.chat_id == chat_id
        )
    )


async def group_members(
    session: AsyncSession, tenant_id: uuid.UUID, chat_id: str, *, include_left: bool
) -> Sequence[GroupMember]:
    query = select(GroupMember).where(
        GroupMember.tenant_id == tenant_id, GroupMember.chat_id == chat_id
    )
    if not include_left:
        query = query.where(GroupMember.left_at.is_(None))
    return (await session.scalars(query.order_by(GroupMember.id))).all()


# -- lifecycle stages (computed by the tagging service) ----------------------------------

LIFECYCLE_STAGES = ("potential", "new", "active", "silent", "churned")
# Per contact the latest change of the batch; applied unless the contact holds a newer
# one, or is merged, erased or unknown.
_FOLLOW_LIFECYCLE = text(
    """
    UPDATE contacts c
       SET lifecycle_stage = u.stage, lifecycle_since = u.since, updated_at = now()
      FROM (SELECT DISTINCT ON (tenant_id, contact_id) tenant_id, contact_id, stage, since
              FROM unnest(CAST(:tenants AS uuid[]), CAST(:contacts AS uuid[]),
                          CAST(:stages AS text[]), CAST(:sinces AS timestamptz[]))
                   WITH ORDINALITY AS e(tenant_id, contact_id, stage, since, n)
             ORDER BY tenant_id, contact_id, since DESC, n DESC) u
     WHERE c.tenant_id = u.tenant_id AND c.id = u.contact_id
       AND c.merged_into_id IS NULL AND c.erased_at IS NULL
       AND (c.lifecycle_since IS NULL OR c.lifecycle_since <= u.since)
       AND (c.lifecycle_stage, c.lifecycle_since) IS DISTINCT FROM (u.stage, u.since)
    """
)


async def follow_lifecycle(
    session: AsyncSession, changes: Sequence[tuple[uuid.UUID, uuid.UUID, str, datetime]]
) -> int:
    """Set contacts' lifecycle stages from (tenant, contact, stage, since) changes, in
    one statement; returns how many contacts changed."""
    if not changes:
        return 0
    result = await session.execute(
        _FOLLOW_LIFECYCLE,
        {
            "tenants": [c[0] for c in changes],
            "contacts": [c[1] for c in changes],
            "stages": [c[2] for c in changes],
            "sinces": [c[3] for c in changes],
        },
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def churn(session: AsyncSession, contact_id: uuid.UUID, at: datetime) -> None:
    """The contact deleted its staff member: churned from `at`, unless a newer stage
    is already on record."""
    await session.execute(
        update(Contact)
        .where(
            Contact.id == contact_id,
            or_(Contact.lifecycle_since.is_(None), Contact.lifecycle_since <= at),
        )
        .values(lifecycle_stage="churned", lifecycle_since=at)
    )


# -- batches of inbound events (inbound_batch.py): one statement for many rows ----------


async def identity_owners(
    session: AsyncSession, keys: Sequence[tuple[uuid.UUID, str, bytes]]
) -> dict[tuple[uuid.UUID, str, bytes], uuid.UUID]:
    """The live contact each (tenant, kind, blind index) belongs to, if any."""
    if not keys:
        return {}
    rows = await session.execute(
        text(
            """
            SELECT i.tenant_id, i.kind, i.value_bidx, COALESCE(c.merged_into_id, c.id)
              FROM unnest(CAST(:tenants AS uuid[]), CAST(:kinds AS text[]),
                          CAST(:keys AS bytea[])) AS k(tenant_id, kind, bidx)
              JOIN contact_identities i
                ON i.tenant_id = k.tenant_id AND i.kind = k.kind AND i.value_bidx = k.bidx
              JOIN contacts c ON c.id = i.contact_id
            """
        ),
        {
            "tenants": [k[0] for k in keys],
            "kinds": [k[1] for k in keys],
            "keys": [k[2] for k in keys],
        },
    )
    return {(tenant, kind, bytes(bidx)): owner for tenant, kind, bidx, owner in rows}


async def insert_contacts(
    session: AsyncSession, contacts: Sequence[tuple[uuid.UUID, uuid.UUID]]
) -> None:
    """New contacts, (id, tenant) each, with nothing known of them yet. Each is a little
    older than the next, as if created one after the other (merges keep the oldest)."""
    if not contacts:
        return
    await session.execute(
        text(
            """
            INSERT INTO contacts (id, tenant_id, created_at, updated_at)
            SELECT id, tenant_id, clock_timestamp(), now()
              FROM unnest(CAST(:ids AS uuid[]), CAST(:tenants AS uuid[]))
                   WITH ORDINALITY AS c(id, tenant_id, n)
             ORDER BY n
            """
        ),
        {"ids": [c[0] for c in contacts], "tenants": [c[1] for c in contacts]},
    )


async def insert_identities(
    session: AsyncSession,
    identities: Sequence[tuple[uuid.UUID, uuid.UUID, str, bytes, bytes, str]],
) -> int:
    """Attach (tenant, contact, kind, blind index, encrypted value, source) identities
    that no contact has; returns how many were attached (fewer: some one has)."""
    if not identities:
        return 0
    ordered = sorted(identities, key=lambda i: (str(i[0]), i[2], i[3]))  # one lock order
    result = await session.execute(
        text(
            """
            INSERT INTO contact_identities
                   (tenant_id, contact_id, kind, value_bidx, value_enc, source)
            SELECT * FROM unnest(CAST(:tenants AS uuid[]), CAST(:contacts AS uuid[]),
                                 CAST(:kinds AS text[]), CAST(:keys AS bytea[]),
                                 CAST(:values AS bytea[]), CAST(:sources AS text[]))
                ON CONFLICT ON CONSTRAINT uq_contact_identities_value DO NOTHING
            """
        ),
        {
            "tenants": [i[0] for i in ordered],
            "contacts": [i[1] for i in ordered],
            "kinds": [i[2] for i in ordered],
            "keys": [i[3] for i in ordered],
            "values": [i[4] for i in ordered],
            "sources": [i[5] for i in ordered],
        },
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def upsert_staff_many(session: AsyncSession, staff: Sequence[tuple[uuid.UUID, str]]) -> None:
    """Record staff members (tenant, userid) not known yet; takes no row locks."""
    if not staff:
        return
    await session.execute(
        text(
            "INSERT INTO staff (tenant_id, userid) "
            "SELECT * FROM unnest(CAST(:tenants AS uuid[]), CAST(:userids AS text[])) "
            "ON CONFLICT ON CONSTRAINT uq_staff_userid DO NOTHING"
        ),
        {"tenants": [s[0] for s in staff], "userids": [s[1] for s in staff]},
    )


async def follow_statuses(
    session: AsyncSession, contact_ids: Sequence[uuid.UUID]
) -> list[tuple[uuid.UUID, str, str]]:
    """(contact, staff userid, status) of every follow of these contacts, locked."""
    if not contact_ids:
        return []
    rows = await session.execute(
        text(
            "SELECT contact_id, staff_userid, status FROM contact_follows "
            "WHERE contact_id = ANY(CAST(:ids AS uuid[])) ORDER BY id FOR UPDATE"
        ),
        {"ids": list(contact_ids)},
    )
    return [(contact, staff, status) for contact, staff, status in rows]


_FOLLOW_COLUMNS = ("status", "state", "welcome_code", "added_at", "removed_at")


async def upsert_follows(
    session: AsyncSession,
    follows: Sequence[tuple[uuid.UUID, uuid.UUID, str, dict[str, Any]]],
) -> None:
    """Create or update (tenant, contact, staff userid, values) follows: each value
    given replaces the stored one, the others are kept."""
    if not follows:
        return
    columns = {c: [f[3].get(c) for f in follows] for c in _FOLLOW_COLUMNS}
    await session.execute(
        text(
            """
            INSERT INTO contact_follows AS f
                   (tenant_id, contact_id, staff_userid, status, state, welcome_code,
                    added_at, removed_at)
            SELECT * FROM unnest(CAST(:tenants AS uuid[]), CAST(:contacts AS uuid[]),
                                 CAST(:staff AS text[]), CAST(:status AS text[]),
                                 CAST(:state AS text[]), CAST(:welcome_code AS text[]),
                                 CAST(:added_at AS timestamptz[]),
                                 CAST(:removed_at AS timestamptz[]))
                ON CONFLICT ON CONSTRAINT uq_contact_follows_pair DO UPDATE
               SET status = EXCLUDED.status,
                   state = COALESCE(EXCLUDED.state, f.state),
                   welcome_code = COALESCE(EXCLUDED.welcome_code, f.welcome_code),
                   added_at = COALESCE(EXCLUDED.added_at, f.added_at),
                   removed_at = COALESCE(EXCLUDED.removed_at, f.removed_at),
                   updated_at = now()
            """
        ),
        {
            "tenants": [f[0] for f in follows],
            "contacts": [f[1] for f in follows],
            "staff": [f[2] for f in follows],
            **columns,
        },
    )


async def claim_owners(
    session: AsyncSession, claims: Sequence[tuple[uuid.UUID, str | None, str | None]]
) -> list[uuid.UUID]:
    """Give each contact this (contact, owner, channel) owner and channel where it has
    none yet (as claim_owner does); returns the contacts that changed."""
    if not claims:
        return []
    rows = await session.execute(
        text(
            """
            UPDATE contacts c
               SET owner_staff_userid = COALESCE(c.owner_staff_userid, u.owner),
                   channel_state = COALESCE(c.channel_state, u.channel),
                   updated_at = now()
              FROM unnest(CAST(:ids AS uuid[]), CAST(:owners AS text[]),
                          CAST(:channels AS text[])) AS u(id, owner, channel)
             WHERE c.id = u.id
               AND ((c.owner_staff_userid IS NULL AND u.owner IS NOT NULL)
                    OR (c.channel_state IS NULL AND u.channel IS NOT NULL))
            RETURNING c.id
            """
        ),
        {
            "ids": [c[0] for c in claims],
            "owners": [c[1] for c in claims],
            "channels": [c[2] for c in claims],
        },
    )
    return [contact_id for (contact_id,) in rows]


async def churn_many(session: AsyncSession, churned: Sequence[tuple[uuid.UUID, datetime]]) -> None:
    """`churn` for many (contact, since) at once."""
    if not churned:
        return
    await session.execute(
        text(
            """
            UPDATE contacts c SET lifecycle_stage = 'churned', lifecycle_since = u.at
              FROM unnest(CAST(:ids AS uuid[]), CAST(:ats AS timestamptz[])) AS u(id, at)
             WHERE c.id = u.id AND (c.lifecycle_since IS NULL OR c.lifecycle_since <= u.at)
            """
        ),
        {"ids": [c[0] for c in churned], "ats": [c[1] for c in churned]},
    )


async def add_timeline_events(
    session: AsyncSession, entries: Sequence[tuple[Any, ...]]
) -> set[tuple[uuid.UUID, str, str]]:
    """Record (tenant, contact, type, source, source event id, occurred at, properties
    as JSON text) timeline entries once each; returns the (tenant, source, source event
    id) of those that were not there yet."""
    if not entries:
        return set()
    rows = await session.execute(
        text(
            """
            INSERT INTO contact_events
                   (tenant_id, contact_id, type, source, source_event_id, occurred_at,
                    properties)
            SELECT tenant_id, contact_id, type, source, source_event_id, occurred_at,
                   CAST(properties AS jsonb)
              FROM unnest(CAST(:tenants AS uuid[]), CAST(:contacts AS uuid[]),
                          CAST(:types AS text[]), CAST(:sources AS text[]),
                          CAST(:ids AS text[]), CAST(:ats AS timestamptz[]),
                          CAST(:properties AS text[]))
                   WITH ORDINALITY AS e(tenant_id, contact_id, type, source, source_event_id,
                                        occurred_at, properties, n)
             ORDER BY n
                ON CONFLICT ON CONSTRAINT uq_contact_events_source DO NOTHING
            RETURNING tenant_id, source, source_event_id
            """
        ),
        {
            "tenants": [e[0] for e in entries],
            "contacts": [e[1] for e in entries],
            "types": [e[2] for e in entries],
            "sources": [e[3] for e in entries],
            "ids": [e[4] for e in entries],
            "ats": [e[5] for e in entries],
            "properties": [e[6] for e in entries],
        },
    )
    return {(tenant, source, event_id) for tenant, source, event_id in rows}


async def add_consent_changes(session: AsyncSession, changes: Sequence[tuple[Any, ...]]) -> None:
    """Record (tenant, contact, channel, status, source, note) consent changes, in order."""
    if not changes:
        return
    await session.execute(
        text(
            """
            INSERT INTO consent_changes (tenant_id, contact_id, channel, status, source, note)
            SELECT tenant_id, contact_id, channel, status, source, note
              FROM unnest(CAST(:tenants AS uuid[]), CAST(:contacts AS uuid[]),
                          CAST(:channels AS text[]), CAST(:statuses AS text[]),
                          CAST(:sources AS text[]), CAST(:notes AS text[]))
                   WITH ORDINALITY AS c(tenant_id, contact_id, channel, status, source, note, n)
             ORDER BY n
            """
        ),
        {
            "tenants": [c[0] for c in changes],
            "contacts": [c[1] for c in changes],
            "channels": [c[2] for c in changes],
            "statuses": [c[3] for c in changes],
            "sources": [c[4] for c in changes],
            "notes": [c[5] for c in changes],
        },
    )


async def tenants_with_wecom_api(
    session: AsyncSession, tenant_ids: Sequence[uuid.UUID]
) -> set[uuid.UUID]:
    """Which of these tenants configured an app secret (see has_wecom_api)."""
    rows = await session.scalars(
        select(WeComSettings.tenant_id).where(
            WeComSettings.tenant_id.in_(list(tenant_ids)), WeComSettings.secret_enc.is_not(None)
        )
    )
    return set(rows)


async def schedule_enrichments(
    session: AsyncSession,
    contacts: Sequence[tuple[uuid.UUID, uuid.UUID | None]],
    *,
    due_at: datetime,
) -> None:
    """The `enrich_contact` job (see processing.schedule_enrichment) for each (tenant,
    contact), in one statement."""
    wanted = [(t, c) for t, c in contacts if c is not None]
    if not wanted:
        return
    await session.execute(
        text(
            """
            INSERT INTO scheduled_jobs (tenant_id, service, job, args, due_at)
            SELECT t, 'users', 'enrich_contact', jsonb_build_object('contact_id', c::text), :due
              FROM unnest(CAST(:tenants AS uuid[]), CAST(:contacts AS uuid[])) AS u(t, c)
            """
        ),
        {"tenants": [w[0] for w in wanted], "contacts": [w[1] for w in wanted], "due": due_at},
    )


async def insert_outbox(
    session: AsyncSession, events: Sequence[tuple[uuid.UUID | None, str, Mapping[str, Any]]]
) -> None:
    """Write (tenant, type, payload) events to the outbox in their order, in one
    statement (inbound_batch.BatchOutbox: the types are named where they are published)."""
    if not events:
        return
    await session.execute(
        text(
            """
            INSERT INTO outbox_events (event_id, tenant_id, type, payload)
            SELECT gen_random_uuid(), tenant_id, type, CAST(payload AS jsonb)
              FROM unnest(CAST(:tenants AS uuid[]), CAST(:types AS text[]),
                          CAST(:payloads AS text[]))
                   WITH ORDINALITY AS e(tenant_id, type, payload, n)
             ORDER BY n
            """
        ),
        {
            "tenants": [e[0] for e in events],
            "types": [e[1] for e in events],
            "payloads": [json.dumps(dict(e[2]), ensure_ascii=False) for e in events],
        },
    )
    # NOTIFY is transactional: the relay wakes when these events are committed.
    await session.execute(text(f"NOTIFY {NOTIFY_CHANNEL}"))
