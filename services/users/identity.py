"""OneID: identifiers resolve to one contact; proof that two contacts are one person merges them.

Identities are unique per tenant and kind (a unique index on their blind
index), so concurrent resolutions of the same identifier agree on one owner:
the loser of an insert race sees the winner's contact and merges into it.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache

import phonenumbers
from sqlalchemy import func, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.users import repository
from services.users.models import IDENTITY_KINDS, Contact, ContactMerge
from shared.crypto import FieldCipher
from shared.errors import InvalidInput
from shared.events import publish

# Tenants have no region of their own yet: national numbers (no +, no 00) are read
# as Chinese. A tenant setting would be passed as `region` to normalise_phone.
DEFAULT_PHONE_REGION = "CN"
MAX_IDENTIFIER = 200
# Digits (any script's), separators and one leading +: no letters (vanity numbers,
# "ext."), no control characters.
_PHONE_CHARACTERS = re.compile(r"\+?[\d \-.()/]{3,40}")
_EMAIL = re.compile(r"[^@\s]+@[^@\s.]+(\.[^@\s.]+)+")


def normalise_phone(value: str, region: str = DEFAULT_PHONE_REGION) -> str:
    """E.164 (`+8613800138000`) of a valid phone number; `region` reads national ones.

    Validity is the `phonenumbers` library's (Google's libphonenumber metadata):
    the number must exist in its country's numbering plan, so `12345` or a
    mobile number with extra digits is refused.
    """
    cleaned = value.strip()
    e164 = _e164(cleaned, region) if _PHONE_CHARACTERS.fullmatch(cleaned) else None
    if e164 is None:
        raise InvalidInput(f"invalid phone number {value!r}", details={"kind": "phone"})
    return e164


# A Chinese mobile number, 11 digits from 13 to 19 (not 179, nor 11 or 12: CN's
# dialling prefixes start so), alone or after +86 / 0086, parses as exactly that
# national number of country 86: checked against the same metadata, without the
# parser (about 0.1 ms a number, on every event's way in and every imported row).
_CN_MOBILE = re.compile(r"(?:\+86|0086)?(1(?:[3-689][0-9]|7[0-8])[0-9]{8})")
_SEPARATORS = re.compile(r"[ \-.()/]")


# The same numbers come back often (a customer's events, the worker reading what
# ingest wrote).
@lru_cache(maxsize=16384)
def _e164(cleaned: str, region: str) -> str | None:
    mobile = _CN_MOBILE.fullmatch(_SEPARATORS.sub("", cleaned)) if region == "CN" else None
    if mobile is not None:
        national = mobile.group(1)
        number = phonenumbers.PhoneNumber(country_code=86, national_number=int(national))
        return f"+86{national}" if phonenumbers.is_valid_number(number) else None
    try:
        number = phonenumbers.parse(cleaned, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


@lru_cache(maxsize=16384)
def _legacy_forms(e164: str) -> tuple[str, ...]:
    forms = [e164[1:]]
    if e164.startswith("+86"):
        national = e164[3:]
        if len(national) == 11:
            forms.append(national)
        if not (len(national) == 11 and national.startswith("1")):
            # Landlines and service numbers (0755..., 400...): as dialled at home.
            # A mobile number is dialled as its 11 digits, already in the list.
            dialled = phonenumbers.format_number(
                phonenumbers.parse(e164), phonenumbers.PhoneNumberFormat.NATIONAL
            )
            forms.append(re.sub(r"[^\d]", "", dialled))
    return tuple(f for f in dict.fromkeys(forms) if f != e164)


def legacy_phone_forms(e164: str) -> list[str]:
    """The forms earlier versions stored the number in, other than E.164 itself.

    They kept what was sent less spaces, dashes and brackets, with +86 / 0086
    dropped from 11-digit Chinese numbers: `13800138000` for a mobile however it
    was sent, `01012345678` for a landline sent as dialled at home, `8613800138000`
    for one sent with its country code and no +. Their identities still have blind
    indexes of those forms, so lookups try them too.
    """
    return list(_legacy_forms(e164))


def normalise(kind: str, value: str) -> str:
    """The canonical form of an identifier (what the blind index is computed on).

    Phones are E.164, emails lower case; other identifiers are kept as sent, less
    surrounding white space. Raises InvalidInput for a value that is not one.
    """
    if kind not in IDENTITY_KINDS:
        raise InvalidInput(f"unknown identity kind {kind!r}", details={"kind": kind})
    if kind == "phone":
        return normalise_phone(value)
    cleaned = value.strip()
    if kind == "email":
        cleaned = cleaned.lower()
        if not _EMAIL.fullmatch(cleaned):
            raise InvalidInput(f"invalid email {value!r}", details={"kind": kind})
    if not cleaned or len(cleaned) > MAX_IDENTIFIER or "\x00" in cleaned:
        raise InvalidInput(f"invalid {kind} {value!r}", details={"kind": kind})
    return cleaned


def stored_forms(kind: str, canonical: str) -> list[str]:
    """Every form an identity of this canonical value may be stored under, canonical
    first (what is written today), then the forms of earlier versions."""
    if kind == "phone":
        return [canonical, *legacy_phone_forms(canonical)]
    return [canonical]


def lookup_keys(
    cipher: FieldCipher, tenant_id: uuid.UUID, kind: str, canonical: str
) -> list[bytes]:
    """Blind indexes to look an identity up by: the canonical one first."""
    tenant = str(tenant_id)
    return [cipher.blind_index(f, kind=kind, tenant=tenant) for f in stored_forms(kind, canonical)]


def identity_context(tenant_id: uuid.UUID, kind: str) -> bytes:
    return b"identity:" + tenant_id.bytes + b":" + kind.encode()


def name_context(tenant_id: uuid.UUID) -> bytes:
    return b"contact-name:" + tenant_id.bytes


def name_grams(cipher: FieldCipher, tenant_id: uuid.UUID, name: str) -> list[bytes]:
    """Blind-indexed character bigrams (and single characters) of a name.

    A free-text search matches contacts whose grams contain all of the query's.
    """
    folded = "".join(name.lower().split())
    grams = set(folded) | {folded[i : i + 2] for i in range(len(folded) - 1)}
    return sorted(cipher.blind_index(g, kind="name", tenant=str(tenant_id)) for g in grams)


@dataclass
class Resolution:
    contact_id: uuid.UUID
    created: bool
    merged: list[uuid.UUID] = field(default_factory=list)


async def resolve(
    session: AsyncSession,
    cipher: FieldCipher,
    tenant_id: uuid.UUID,
    identities: Mapping[str, str],
    *,
    source: str,
    create: bool = True,
    announce: bool = True,
) -> Resolution | None:
    """The contact these identifiers belong to: found, created, or merged into one.

    A contact created is announced (`contact.profile_changed`) unless `announce` is
    False: the caller then publishes its profile once it has set it."""
    normalised = {kind: normalise(kind, value) for kind, value in identities.items() if value}
    if not normalised:
        raise InvalidInput("at least one contact identifier is needed")
    # Per kind, the blind index written today first, then those of earlier versions' forms.
    keys = {kind: lookup_keys(cipher, tenant_id, kind, value) for kind, value in normalised.items()}
    owners = await repository.contact_ids_for(
        session, tenant_id, [(kind, bidx) for kind, found in keys.items() for bidx in found]
    )
    known = sorted(set(owners.values()), key=str)
    created = False
    if known:
        contact_id = await _oldest(session, tenant_id, known)
    elif not create:
        return None
    else:
        contact_id = uuid.uuid4()
        session.add(Contact(id=contact_id, tenant_id=tenant_id))
        await session.flush()
        if announce:
            await repository.publish_profiles(session, [contact_id])
        created = True
    resolution = Resolution(contact_id, created)
    for other in known:
        if other != contact_id:
            await merge(session, tenant_id, contact_id, other, reason=f"shared identity ({source})")
            resolution.merged.append(other)
    for kind, forms in keys.items():
        if any((kind, bidx) in owners for bidx in forms):
            continue
        owner = await repository.add_identity(
            session,
            tenant_id,
            resolution.contact_id,
            kind=kind,
            value_bidx=forms[0],
            value_enc=cipher.encrypt(normalised[kind], context=identity_context(tenant_id, kind)),
            source=source,
        )
        if owner != resolution.contact_id:
            # Someone attached this identity to another contact a moment ago: one person.
            survivor = await _oldest(session, tenant_id, [owner, resolution.contact_id])
            loser = owner if survivor == resolution.contact_id else resolution.contact_id
            await merge(session, tenant_id, survivor, loser, reason=f"shared {kind} ({source})")
            resolution.merged.append(loser)
            resolution.contact_id = survivor
            resolution.created = resolution.created and survivor != loser
    return resolution


async def _oldest(
    session: AsyncSession, tenant_id: uuid.UUID, contact_ids: list[uuid.UUID]
) -> uuid.UUID:
    row = await session.scalar(
        text(
            "SELECT COALESCE(merged_into_id, id) FROM contacts WHERE tenant_id = :t "
            "AND id = ANY(:ids) ORDER BY created_at, id LIMIT 1"
        ),
        {"t": tenant_id, "ids": contact_ids},
    )
    assert isinstance(row, uuid.UUID)
    return row


_MOVE = [
    # Identities, timeline, group memberships and consent follow the survivor.
    f"UPDATE {table} SET contact_id = :survivor WHERE tenant_id = :t AND contact_id = :merged"
    for table in ("contact_identities", "contact_events", "group_members", "consent_changes")
] + [
    # A staff member following both keeps the survivor's relation.
    """DELETE FROM contact_follows m USING contact_follows s
        WHERE m.tenant_id = :t AND m.contact_id = :merged AND s.tenant_id = :t
          AND s.contact_id = :survivor AND s.staff_userid = m.staff_userid""",
    "UPDATE contact_follows SET contact_id = :survivor "
    "WHERE tenant_id = :t AND contact_id = :merged",
]


async def merge(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    survivor_id: uuid.UUID,
    merged_id: uuid.UUID,
    *,
    reason: str,
) -> None:
    """Fold `merged_id` into `survivor_id`; history follows, the merge is recorded."""
    if survivor_id == merged_id:
        return
    # Lock both in one order, so concurrent merges cannot deadlock.
    for contact_id in sorted((survivor_id, merged_id), key=str):
        await repository.lock_contact(session, tenant_id, contact_id)
    survivor = await repository.get_contact(session, tenant_id, survivor_id)
    merged = await repository.get_contact(session, tenant_id, merged_id)
    if survivor is None or merged is None or merged.merged_into_id is not None:
        return
    params = {"t": tenant_id, "survivor": survivor_id, "merged": merged_id}
    for statement in _MOVE:
        await session.execute(text(statement), params)
    before = (survivor.owner_staff_userid, survivor.channel_state, survivor.attributes)
    after = (
        survivor.owner_staff_userid or merged.owner_staff_userid,
        survivor.channel_state or merged.channel_state,
        {**merged.attributes, **survivor.attributes},
    )
    await session.execute(
        update(Contact)
        .where(Contact.id == survivor_id)
        .values(
            attributes=after[2],
            name_enc=survivor.name_enc or merged.name_enc,
            name_grams=survivor.name_grams or merged.name_grams,
            owner_staff_userid=after[0],
            channel_state=after[1],
            updated_at=func.now(),
        )
    )
    await session.execute(
        update(Contact)
        .where(Contact.id == merged_id)
        .values(merged_into_id=survivor_id, updated_at=func.now())
    )
    # Contacts merged into the one now disappearing move on to the survivor.
    await session.execute(
        update(Contact)
        .where(Contact.tenant_id == tenant_id, Contact.merged_into_id == merged_id)
        .values(merged_into_id=survivor_id)
    )
    session.add(
        ContactMerge(
            tenant_id=tenant_id, survivor_id=survivor_id, merged_id=merged_id, reason=reason
        )
    )
    await session.flush()
    await publish(
        session,
        "contact.merged",
        {"survivor_id": str(survivor_id), "merged_id": str(merged_id), "reason": reason},
        tenant_id=tenant_id,
    )
    if after != before:
        # The survivor took the merged contact's owner, channel or attributes.
        await repository.publish_profiles(session, [survivor_id])
