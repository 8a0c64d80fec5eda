"""Business rules of the users service: integration settings and the contact read side."""

from __future__ import annotations

import base64
import secrets
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.users import SERVICE, consent, repository
from services.users.identity import (
    identity_context,
    lookup_keys,
    name_context,
    name_grams,
    normalise,
)
from services.users.models import Contact, ContactEvent, ContactFollow, ContactMerge
from services.users.schemas import (
    ContactDetail,
    ContactSummary,
    FollowOut,
    IdentityOut,
    TimelineEntry,
    UsersStatus,
)
from services.users.wecom_crypto import check_encoding_aes_key
from shared.apikeys import Principal
from shared.crypto import FieldCipher
from shared.errors import InvalidInput, NotFound
from shared.privacy import (
    PersonalKind,
    audit_unmasked_list,
    audit_unmasked_read,
    may_unmask,
    present,
)
from shared.runtime import Runtime
from shared.service_status import service_status

_PERSONAL: dict[str, PersonalKind] = {
    "phone": "phone",
    "email": "email",
    "external_userid": "identifier",
    "unionid": "identifier",
    "openid": "identifier",
    "shop_customer_id": "identifier",
    "referral_code": "identifier",
}


async def status(session: AsyncSession, runtime: Runtime, tenant_id: uuid.UUID) -> UsersStatus:
    found = await service_status(session, runtime, SERVICE, tenant_id)
    pending = await repository.count_pending_inbound(session, tenant_id)
    return UsersStatus.model_validate({**found.model_dump(), "inbound_pending": pending})


# -- integration settings ---------------------------------------------------------------


async def configure_wecom(
    session: AsyncSession,
    cipher: FieldCipher,
    tenant_id: uuid.UUID,
    *,
    corp_id: str,
    token: str,
    encoding_aes_key: str,
    secret: str | None,
) -> None:
    """Store a tenant's WeCom callback settings and app secret, encrypted."""
    try:
        check_encoding_aes_key(encoding_aes_key)
    except ValueError as exc:
        raise InvalidInput(str(exc), details={"field": "encoding_aes_key"}) from None
    context = repository.secret_context(tenant_id)
    await repository.save_wecom_settings(
        session,
        tenant_id,
        corp_id=corp_id,
        token_enc=cipher.encrypt(token, context=context + b"token"),
        aes_key_enc=cipher.encrypt(encoding_aes_key, context=context + b"aes_key"),
        secret_enc=cipher.encrypt(secret, context=context + b"secret") if secret else None,
    )


def wecom_secret(cipher: FieldCipher, tenant_id: uuid.UUID, secret_enc: bytes) -> str:
    return cipher.decrypt(secret_enc, context=repository.secret_context(tenant_id) + b"secret")


async def create_webhook_secret(
    session: AsyncSession, cipher: FieldCipher, tenant_id: uuid.UUID
) -> tuple[uuid.UUID, str]:
    """A new signing secret (shown once); the oldest beyond two active is revoked."""
    value = "whsec_" + secrets.token_urlsafe(32)
    context = repository.secret_context(tenant_id) + b"webhook"
    created = await repository.add_webhook_secret(
        session, tenant_id, cipher.encrypt(value, context=context)
    )
    return created.id, value


# -- contacts ---------------------------------------------------------------------------


def _visible(principal: Principal) -> Any:
    """Staff see only contacts they follow or own; everyone else the whole tenant."""
    if principal.role != "staff":
        return True
    followed = select(ContactFollow.contact_id).where(
        ContactFollow.tenant_id == principal.tenant,
        ContactFollow.staff_userid == principal.staff_userid,
    )
    return or_(Contact.owner_staff_userid == principal.staff_userid, Contact.id.in_(followed))


def _cursor(created_at: datetime, contact_id: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{contact_id}".encode()).decode()


def _parse_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        stamp, _, ident = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        return datetime.fromisoformat(stamp), uuid.UUID(ident)
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("cursor is invalid", details={"field": "cursor"}) from None


async def list_contacts(
    session: AsyncSession,
    cipher: FieldCipher,
    principal: Principal,
    *,
    filters: dict[str, Any],
    cursor: str | None,
    limit: int,
) -> tuple[list[ContactSummary], str | None]:
    tenant_id = principal.tenant
    query = select(Contact).where(
        Contact.tenant_id == tenant_id, Contact.merged_into_id.is_(None), _visible(principal)
    )
    for kind in ("external_userid", "phone", "unionid"):
        if filters.get(kind):
            forms = lookup_keys(cipher, tenant_id, kind, normalise(kind, filters[kind]))
            owners = await repository.contact_ids_for(
                session, tenant_id, [(kind, bidx) for bidx in forms]
            )
            query = query.where(Contact.id.in_(list(owners.values()) or [uuid.uuid4()]))
    if filters.get("owner"):
        query = query.where(Contact.owner_staff_userid == filters["owner"])
    if filters.get("lifecycle_stage"):
        query = query.where(Contact.lifecycle_stage == filters["lifecycle_stage"])
    if filters.get("created_from"):
        query = query.where(Contact.created_at >= filters["created_from"])
    if filters.get("created_to"):
        query = query.where(Contact.created_at < filters["created_to"])
    if filters.get("q"):
        query = query.where(
            Contact.name_grams.contains(name_grams(cipher, tenant_id, filters["q"]))
        )
    if cursor:
        stamp, last = _parse_cursor(cursor)
        query = query.where(tuple_(Contact.created_at, Contact.id) < tuple_(stamp, last))
    rows = list(
        await session.scalars(
            query.order_by(Contact.created_at.desc(), Contact.id.desc()).limit(limit + 1)
        )
    )
    page = rows[:limit]
    next_cursor = _cursor(page[-1].created_at, page[-1].id) if len(rows) > limit else None
    unmasked = [
        c.id
        for c in page
        if c.name_enc is not None and may_unmask(principal, owner_staff_userid=c.owner_staff_userid)
    ]
    if unmasked:
        audit_unmasked_list(
            session,
            None,
            principal,
            subject_type="contact_list",
            subject_ids=unmasked,
            fields=["name"],
            filters=filters,
        )
    return [_summary(cipher, principal, c) for c in page], next_cursor


def _name(cipher: FieldCipher, principal: Principal, contact: Contact) -> str | None:
    if contact.name_enc is None:
        return None
    name = cipher.decrypt(contact.name_enc, context=name_context(contact.tenant_id))
    return present(name, "name", principal, owner_staff_userid=contact.owner_staff_userid)


def _summary(cipher: FieldCipher, principal: Principal, contact: Contact) -> ContactSummary:
    return ContactSummary(
        id=contact.id,
        name=_name(cipher, principal, contact),
        owner_staff_userid=contact.owner_staff_userid,
        lifecycle_stage=contact.lifecycle_stage,
        channel_state=contact.channel_state,
        created_at=contact.created_at,
        merged_into=contact.merged_into_id,
        erased=contact.erased_at is not None,
    )


async def contact_visible(
    session: AsyncSession, principal: Principal, contact_id: uuid.UUID
) -> bool:
    """Whether the contact is the caller's tenant's and, for staff, theirs (`_visible`)."""
    found = await session.scalar(
        select(Contact.id).where(
            Contact.id == contact_id, Contact.tenant_id == principal.tenant, _visible(principal)
        )
    )
    return found is not None


async def visible_contact(
    session: AsyncSession, principal: Principal, contact_id: uuid.UUID
) -> Contact:
    contact = await session.scalar(
        select(Contact).where(
            Contact.id == contact_id, Contact.tenant_id == principal.tenant, _visible(principal)
        )
    )
    if contact is None:
        raise NotFound("no such contact")
    return contact


async def contact_detail(
    session: AsyncSession, cipher: FieldCipher, principal: Principal, contact_id: uuid.UUID
) -> ContactDetail:
    """The contact as `principal` may see it; showing its personal data unmasked is audited."""
    contact = await visible_contact(session, principal, contact_id)
    tenant_id = contact.tenant_id
    identities = []
    for identity in await repository.identities_of(session, tenant_id, contact.id):
        value = cipher.decrypt(
            identity.value_enc, context=identity_context(tenant_id, identity.kind)
        )
        shown = present(
            value,
            _PERSONAL.get(identity.kind, "identifier"),
            principal,
            owner_staff_userid=contact.owner_staff_userid,
        )
        identities.append(
            IdentityOut(kind=identity.kind, value=shown or "", source=identity.source)
        )
    follows = [
        FollowOut(
            staff_userid=f.staff_userid,
            status=f.status,
            remark=f.remark,
            state=f.state,
            added_at=f.added_at,
            removed_at=f.removed_at,
        )
        for f in await repository.follows_of(session, tenant_id, contact.id)
    ]
    merged_from = list(
        await session.scalars(
            select(ContactMerge.merged_id).where(
                ContactMerge.tenant_id == tenant_id, ContactMerge.survivor_id == contact.id
            )
        )
    )
    consents = {
        channel: await consent.may_message(session, tenant_id, contact.id, channel)
        for channel in ("wecom", "sms", "in_app")
    }
    detail = ContactDetail(
        **_summary(cipher, principal, contact).model_dump(),
        avatar_url=contact.avatar_url,
        gender=contact.gender,
        corp_name=contact.corp_name,
        attributes=contact.attributes,
        identities=identities,
        follows=follows,
        merged_from=merged_from,
        consent=consents,
    )
    if may_unmask(principal, owner_staff_userid=contact.owner_staff_userid) and (
        identities or contact.name_enc
    ):
        audit_unmasked_read(
            session,
            None,
            principal,
            subject_type="contact",
            subject_id=contact.id,
            fields=sorted({"name", *(i.kind for i in identities)}),
        )
    return detail


async def patch_contact(
    session: AsyncSession,
    cipher: FieldCipher,
    principal: Principal,
    contact_id: uuid.UUID,
    *,
    attributes: dict[str, Any],
    name: str | None,
) -> None:
    contact = await visible_contact(session, principal, contact_id)
    if contact.erased_at is not None or contact.merged_into_id is not None:
        raise InvalidInput("this contact was erased or merged; change the survivor instead")
    merged = {**contact.attributes, **attributes}
    values: dict[str, Any] = {
        "attributes": {k: v for k, v in merged.items() if v is not None},
        "updated_at": func.now(),
    }
    if name is not None:
        values["name_enc"] = cipher.encrypt(name, context=name_context(contact.tenant_id))
        values["name_grams"] = name_grams(cipher, contact.tenant_id, name)
    profile_changed = values["attributes"] != contact.attributes
    await session.execute(update(Contact).where(Contact.id == contact.id).values(**values))
    if profile_changed:
        await repository.publish_profiles(session, [contact.id])


async def timeline(
    session: AsyncSession,
    principal: Principal,
    contact_id: uuid.UUID,
    *,
    before_id: int | None,
    limit: int,
) -> tuple[list[TimelineEntry], str | None]:
    contact = await visible_contact(session, principal, contact_id)
    query = (
        select(ContactEvent)
        .where(ContactEvent.tenant_id == contact.tenant_id, ContactEvent.contact_id == contact.id)
        .order_by(ContactEvent.occurred_at.desc(), ContactEvent.id.desc())
        .limit(limit + 1)
    )
    if before_id is not None:
        pivot = (
            select(ContactEvent.occurred_at).where(ContactEvent.id == before_id).scalar_subquery()
        )
        query = query.where(
            or_(
                ContactEvent.occurred_at < pivot,
                and_(ContactEvent.occurred_at == pivot, ContactEvent.id < before_id),
            )
        )
    rows = list(await session.scalars(query))
    page = rows[:limit]
    entries = [
        TimelineEntry(
            id=r.id,
            type=r.type,
            source=r.source,
            source_event_id=r.source_event_id,
            occurred_at=r.occurred_at,
            properties=r.properties,
        )
        for r in page
    ]
    return entries, (str(page[-1].id) if len(rows) > limit else None)
