"""Erasure on request: the person's identifying data is destroyed, the rest stays consistent.

The contact keeps its id (a random UUID that identifies no one), so points
ledgers, tags, campaign sends and counts that refer to it stay intact under
that pseudonymous id. What identifies the person goes: identities, name,
profile, attributes, staff remarks, event properties, and the raw copies of
what integrations sent about them (inbound events and outbox payloads).
"""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.users import repository
from shared.crypto import FieldCipher
from shared.errors import Conflict, NotFound
from shared.events import publish

_REDACT = [
    """UPDATE contact_follows SET remark = NULL, welcome_code = NULL
        WHERE tenant_id = :t AND contact_id = :c""",
    "UPDATE contact_events SET properties = '{}'::jsonb WHERE tenant_id = :t AND contact_id = :c",
    # The raw copies of what integrations sent about the person.
    "UPDATE inbound_events SET payload_enc = NULL WHERE tenant_id = :t AND contact_id = :c",
    """UPDATE outbox_events SET payload = (payload - 'external_userid' - 'properties'
                                           - 'welcome_code' - 'remark')
        WHERE tenant_id = :t AND payload->>'contact_id' = :c_text""",
    """UPDATE group_members SET member_id = :pseudonym || '-' || id
        WHERE tenant_id = :t AND contact_id = :c""",
    "DELETE FROM contact_identities WHERE tenant_id = :t AND contact_id = :c",
    """UPDATE contacts SET name_enc = NULL, name_grams = '{}'::bytea[], avatar_url = NULL,
              gender = NULL, corp_name = NULL, attributes = '{}'::jsonb, erased_at = :now,
              pseudonym = :pseudonym, updated_at = :now
        WHERE tenant_id = :t AND id = :c""",
]


async def erase_contact(
    session: AsyncSession, cipher: FieldCipher, tenant_id: uuid.UUID, contact_id: uuid.UUID
) -> str:
    """Erase a contact's identifying data; returns its pseudonym. Erasing twice is refused."""
    contact = await repository.lock_contact(session, tenant_id, contact_id)
    if contact is None:
        raise NotFound("no such contact")
    if contact.erased_at is not None:
        raise Conflict("this contact was already erased", details={"pseudonym": contact.pseudonym})
    if contact.merged_into_id is not None:
        raise Conflict(
            "this contact was merged; erase the survivor",
            details={"merged_into": str(contact.merged_into_id)},
        )
    pseudonym = "erased-" + secrets.token_hex(8)
    params = {
        "t": tenant_id,
        "c": contact_id,
        "c_text": str(contact_id),
        "pseudonym": pseudonym,
        "now": datetime.now(UTC),
    }
    for statement in _REDACT:
        await session.execute(text(statement), params)
    await publish(
        session,
        "contact.erased",
        {"contact_id": str(contact_id), "pseudonym": pseudonym},
        tenant_id=tenant_id,
    )
    return pseudonym
