"""users service: Contacts and their identities (OneID), WeCom and webhook ingestion, consent.

Other services read from it only through functions exported here, and
otherwise talk to it through events.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.scope import register_contact_resolver

if TYPE_CHECKING:
    from collections.abc import Collection
    from uuid import UUID

    import httpx
    from sqlalchemy.ext.asyncio import AsyncSession

    from services.users.wecom_client import WeComClient
    from shared.apikeys import Principal

SERVICE = "users"


async def contact_status(session: AsyncSession, tenant_id: UUID, contact_id: UUID) -> str:
    """'active', 'merged:<survivor id>', 'erased' or 'missing': what other services may
    ask of a contact before acting on it."""
    from sqlalchemy import select

    from services.users.models import Contact

    row = (
        await session.execute(
            select(Contact.merged_into_id, Contact.erased_at).where(
                Contact.tenant_id == tenant_id, Contact.id == contact_id
            )
        )
    ).first()
    if row is None:
        return "missing"
    if row.merged_into_id is not None:
        return f"merged:{row.merged_into_id}"
    return "erased" if row.erased_at is not None else "active"


async def contact_statuses(
    session: AsyncSession, tenant_id: UUID, contact_ids: Collection[UUID]
) -> dict[UUID, str]:
    """`contact_status` of many contacts of a tenant in one statement."""
    from sqlalchemy import select

    from services.users.models import Contact
    from shared.db import one_of

    if not contact_ids:
        return {}
    rows = (
        await session.execute(
            select(Contact.id, Contact.merged_into_id, Contact.erased_at).where(
                Contact.tenant_id == tenant_id, one_of(Contact.id, contact_ids)
            )
        )
    ).all()
    found = {
        row.id: (
            f"merged:{row.merged_into_id}"
            if row.merged_into_id is not None
            else "erased"
            if row.erased_at is not None
            else "active"
        )
        for row in rows
    }
    return {contact_id: found.get(contact_id, "missing") for contact_id in contact_ids}


async def wecom_api_client(
    session: AsyncSession,
    tenant_id: UUID,
    *,
    max_retries: int = 0,
    http: httpx.AsyncClient | None = None,
) -> WeComClient | None:
    """The tenant's WeCom API client, or None without an app secret: for the WeCom calls
    other services make from their workers (never on a request path). With `http`, it
    uses that (shared, long-lived) HTTP client, and closing it leaves that open."""
    from services.users.sync import client_for

    return await client_for(session, tenant_id, max_retries=max_retries, http=http)


async def wecom_handles(
    session: AsyncSession, tenant_id: UUID, contact_ids: list[UUID]
) -> dict[UUID, tuple[str, str]]:
    """For each of these live contacts known on WeCom: (its external_userid, the userid of
    a staff member following it there: the owner if they follow it, else the latest)."""
    from sqlalchemy import select
    from sqlalchemy.dialects.postgresql import distinct_on

    from services.users.identity import identity_context
    from services.users.models import Contact, ContactFollow, ContactIdentity
    from shared.runtime import runtime_of

    if not contact_ids:
        return {}
    rows = (
        await session.execute(
            select(
                ContactIdentity.contact_id, ContactIdentity.value_enc, ContactFollow.staff_userid
            )
            .join(Contact, Contact.id == ContactIdentity.contact_id)
            .join(
                ContactFollow,
                (ContactFollow.contact_id == Contact.id) & (ContactFollow.status == "active"),
            )
            .where(
                ContactIdentity.tenant_id == tenant_id,
                ContactIdentity.kind == "external_userid",
                ContactIdentity.contact_id.in_(contact_ids),
                Contact.merged_into_id.is_(None),
                Contact.erased_at.is_(None),
            )
            .ext(distinct_on(ContactIdentity.contact_id))
            .order_by(
                ContactIdentity.contact_id,
                (ContactFollow.staff_userid == Contact.owner_staff_userid).desc(),
                ContactFollow.added_at.desc().nulls_last(),
                ContactIdentity.id,
            )
        )
    ).all()
    cipher = runtime_of(session).cipher
    context = identity_context(tenant_id, "external_userid")
    return {
        row.contact_id: (cipher.decrypt(row.value_enc, context=context), row.staff_userid)
        for row in rows
    }


async def contact_in_scope(session: AsyncSession, principal: Principal, contact_id: UUID) -> bool:
    """Whether `principal` may read and change this contact of its tenant: staff only the
    contacts they own or follow, every other tenant role all of them (merged and erased
    contacts included, as their own routes answer them). The rule of every
    contact-keyed route, through `shared.scope.contact_in_scope`."""
    from services.users.service import contact_visible

    return await contact_visible(session, principal, contact_id)


# Every service's contact-keyed routes ask this package who sees which contact.
register_contact_resolver(contact_in_scope)


async def message_facts(
    session: AsyncSession, tenant_id: UUID, contact_ids: Collection[UUID]
) -> dict[UUID, dict[str, str | None]]:
    """For each live contact among these (merged and erased ones are left out): its
    `name` (decrypted, for rendering a message to it), `lifecycle_stage`, `owner`
    (the owning staff member) and `phone` (its first phone number, for SMS)."""
    from sqlalchemy import select
    from sqlalchemy.dialects.postgresql import distinct_on

    from services.users.identity import identity_context, name_context
    from services.users.models import Contact, ContactIdentity
    from shared.runtime import runtime_of

    if not contact_ids:
        return {}
    wanted = list(contact_ids)
    rows = (
        await session.execute(
            select(
                Contact.id, Contact.name_enc, Contact.lifecycle_stage, Contact.owner_staff_userid
            ).where(
                Contact.tenant_id == tenant_id,
                Contact.id.in_(wanted),
                Contact.merged_into_id.is_(None),
                Contact.erased_at.is_(None),
            )
        )
    ).all()
    phones = (
        await session.execute(
            select(ContactIdentity.contact_id, ContactIdentity.value_enc)
            .where(
                ContactIdentity.tenant_id == tenant_id,
                ContactIdentity.kind == "phone",
                ContactIdentity.contact_id.in_(wanted),
            )
            .ext(distinct_on(ContactIdentity.contact_id))
            .order_by(ContactIdentity.contact_id, ContactIdentity.id)
        )
    ).all()
    cipher = runtime_of(session).cipher
    names = name_context(tenant_id)
    phone_context = identity_context(tenant_id, "phone")
    phone_of = {
        row.contact_id: cipher.decrypt(row.value_enc, context=phone_context) for row in phones
    }
    return {
        row.id: {
            "name": None if row.name_enc is None else cipher.decrypt(row.name_enc, context=names),
            "lifecycle_stage": row.lifecycle_stage,
            "owner": row.owner_staff_userid,
            "phone": phone_of.get(row.id),
        }
        for row in rows
    }


async def opted_out(
    session: AsyncSession, tenant_id: UUID, contact_ids: Collection[UUID], channel: str
) -> set[UUID]:
    """Which of these contacts may not receive marketing messages on `channel` (their
    latest consent change for it, or for all channels, is an opt-out): `may_message`
    for many contacts in one statement."""
    from sqlalchemy import select
    from sqlalchemy.dialects.postgresql import distinct_on

    from services.users.consent import check_channel
    from services.users.models import ConsentChange

    if not contact_ids:
        return set()
    latest = (
        select(ConsentChange.contact_id, ConsentChange.status)
        .where(
            ConsentChange.tenant_id == tenant_id,
            ConsentChange.contact_id.in_(list(contact_ids)),
            ConsentChange.channel.in_((check_channel(channel), "all")),
        )
        .ext(distinct_on(ConsentChange.contact_id))
        .order_by(ConsentChange.contact_id, ConsentChange.id.desc())
        .subquery()
    )
    rows = await session.execute(select(latest.c.contact_id).where(latest.c.status == "opted_out"))
    return {row[0] for row in rows}


async def recent_welcome_codes(
    session: AsyncSession,
    after_id: int,
    within_seconds: float,
    limit: int = 2000,
    skip: Collection[int] = (),
) -> tuple[list[dict[str, object]], int]:
    """The WeCom `add_external_contact` callbacks stored after inbound row `after_id`
    (and in the last `within_seconds`) that carry a WelcomeCode, whether or not this
    service has applied them yet: for a welcome message that must reach WeCom within
    the code's 20 s, ahead of a backlog of callbacks. Each: `inbound_id`,
    `tenant_id`, `staff_userid`, `external_userid`, `state`, `welcome_code`,
    `received_at` (`contacts_by_external_userid` says which are known already).
    Rows whose ids are in `skip` (seen before) are left out without being read. Also
    the highest inbound id stored when asked: a caller's next `after_id` (less a
    margin for rows committed late), so that it never reads the same rows again."""
    from sqlalchemy import func, select, text

    from services.users.ingest import read_payload
    from services.users.models import InboundEvent
    from services.users.wecom_crypto import parse_xml
    from shared.runtime import runtime_of

    high = int(await session.scalar(select(func.max(InboundEvent.id))) or 0)
    rows = (
        await session.execute(
            select(
                InboundEvent.id,
                InboundEvent.tenant_id,
                InboundEvent.payload_enc,
                InboundEvent.received_at,
            )
            .where(
                InboundEvent.id > after_id,
                InboundEvent.type == "change_external_contact.add_external_contact",
                InboundEvent.received_at > text("now() - make_interval(secs => :within)"),
            )
            .order_by(InboundEvent.id)
            .limit(limit),
            {"within": within_seconds},
        )
    ).all()
    cipher = runtime_of(session).cipher
    found: list[dict[str, object]] = []
    for row in rows:
        if row.payload_enc is None or row.id in skip:
            continue
        payload = read_payload(cipher, row.tenant_id, row.payload_enc)
        msg = payload["msg"] if "msg" in payload else parse_xml(str(payload.get("xml", "")))
        code, external = msg.get("WelcomeCode"), msg.get("ExternalUserID")
        if not code or not external:
            continue
        found.append(
            {
                "inbound_id": row.id,
                "tenant_id": row.tenant_id,
                "staff_userid": msg.get("UserID") or None,
                "external_userid": external,
                "state": msg.get("State") or None,
                "welcome_code": code,
                "received_at": row.received_at,
            }
        )
    return found, high


async def contacts_by_external_userid(
    session: AsyncSession, tenant_id: UUID, external_userids: Collection[str]
) -> dict[str, UUID]:
    """The contacts these WeCom external_userids belong to (those known), in one
    statement."""
    from sqlalchemy import select

    from services.users.identity import lookup_keys, normalise
    from services.users.models import ContactIdentity
    from shared.errors import InvalidInput
    from shared.runtime import runtime_of

    cipher = runtime_of(session).cipher
    by_key: dict[bytes, str] = {}
    for external in external_userids:
        try:
            canonical = normalise("external_userid", external)
        except InvalidInput:
            continue
        for key in lookup_keys(cipher, tenant_id, "external_userid", canonical):
            by_key[key] = external
    if not by_key:
        return {}
    rows = await session.execute(
        select(ContactIdentity.value_bidx, ContactIdentity.contact_id).where(
            ContactIdentity.tenant_id == tenant_id,
            ContactIdentity.kind == "external_userid",
            ContactIdentity.value_bidx.in_(list(by_key)),
        )
    )
    return {by_key[bytes(row.value_bidx)]: row.contact_id for row in rows}


async def contacts_created_at(
    session: AsyncSession, tenant_id: UUID, contact_ids: Collection[UUID]
) -> dict[UUID, object]:
    """When each of these contacts was first known (its row's creation time)."""
    from sqlalchemy import select

    from services.users.models import Contact
    from shared.db import one_of

    if not contact_ids:
        return {}
    rows = await session.execute(
        select(Contact.id, Contact.created_at).where(
            Contact.tenant_id == tenant_id, one_of(Contact.id, contact_ids)
        )
    )
    return {row.id: row.created_at for row in rows}
