"""Masking policy: analysts never see personal data; staff only for their own contacts."""

from __future__ import annotations

import uuid
from collections import Counter
from typing import get_args

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.users.identity import identity_context, name_context, normalise
from services.users.models import Contact, ContactIdentity
from shared import auth
from shared.auth import Principal, Role
from shared.models import AuditEntry
from shared.privacy import PersonalKind, audit_unmasked_list, audit_unmasked_read, mask, present
from shared.runtime import Runtime
from tests.helpers import bearer, make_key, make_tenant


def principal(role: Role, staff: str | None = None) -> Principal:
    return Principal(
        api_key_id=uuid.uuid4(),
        role=role,
        tenant_id=uuid.uuid4(),
        tenant_slug="t",
        staff_userid=staff,
    )


@pytest.mark.parametrize(
    ("value", "kind", "masked"),
    [
        ("13812341234", "phone", "138****1234"),
        ("+8613812341234", "phone", "+86138****1234"),
        ("12345", "phone", "*****"),
        ("张三丰", "name", "张**"),
        ("Li", "name", "L*"),
        ("wang@example.com", "email", "w***@example.com"),
        ("oAbCdEfGhIjKlMnOp", "identifier", "oAbC****MnOp"),
        ("short", "identifier", "****"),
        ("上海市浦东新区世纪大道100号", "address", "上海市浦东新****"),
        ("", "phone", ""),
        # Short values never come back whole.
        ("0", "name", "*"),
        ("张", "name", "*"),
        ("张三", "name", "张*"),
        ("1", "phone", "*"),
        ("1234567", "phone", "*******"),
        ("12345678", "phone", "****5678"),
        ("1234567890", "phone", "12****7890"),
        ("   ", "phone", "*"),
        ("a@example.com", "email", "***@example.com"),
        ("@example.com", "email", "@exa****.com"),
        ("@x.cn", "email", "****"),
        ("x", "email", "****"),
        ("a", "identifier", "****"),
        ("a", "address", "****"),
    ],
)
def test_mask(value: str, kind: str, masked: str) -> None:
    assert mask(value, kind) == masked  # type: ignore[arg-type]


KINDS: tuple[PersonalKind, ...] = get_args(PersonalKind)


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(KINDS), value=st.text(min_size=1, max_size=40))
def test_masking_never_shows_the_whole_value(kind: PersonalKind, value: str) -> None:
    """What holds for any value: the masked form says it is masked, shows only characters
    of the value and fewer of them than it has (so never all of it). A value made
    of asterisks may look like its mask, which still reveals nothing of it; any
    other value is never its own mask and never inside it."""
    masked = mask(value, kind)
    assert "*" in masked
    shown = Counter(masked.replace("*", ""))
    assert shown <= Counter(value), "only the value's own characters are shown"
    assert shown.total() < len(value), "at least one character stays hidden"
    if "*" not in value:
        assert masked != value
        assert value not in masked


@settings(max_examples=100, deadline=None)
@given(
    local=st.text(st.characters(blacklist_characters="@*"), max_size=3),
    domain=st.text(st.characters(blacklist_characters="*"), max_size=12),
)
def test_emails_never_show_their_local_part_whole(local: str, domain: str) -> None:
    value = f"{local}@{domain}"
    masked = mask(value, "email")
    assert value not in masked and masked != value
    if len(local) == 1:
        assert masked.startswith("***@"), "a one-character local part is hidden"


def test_who_sees_what() -> None:
    phone = "13812341234"
    assert present(phone, "phone", principal("admin")) == phone
    assert present(phone, "phone", principal("operator")) == phone
    assert present(phone, "phone", principal("analyst")) == "138****1234"
    assert present(phone, "phone", principal("analyst"), owner_staff_userid=None) == "138****1234"
    staff = principal("staff", staff="zhangsan")
    assert present(phone, "phone", staff, owner_staff_userid="zhangsan") == phone
    assert present(phone, "phone", staff, owner_staff_userid="lisi") == "138****1234"
    assert present(phone, "phone", staff) == "138****1234"
    assert present(None, "phone", principal("admin")) is None


async def test_unmasked_reads_are_audited(session: AsyncSession) -> None:
    reader = principal("admin")
    subject = uuid.uuid4()
    audit_unmasked_read(
        session, None, reader, subject_type="contact", subject_id=subject, fields=["phone", "name"]
    )
    await session.flush()
    entry = await session.scalar(
        select(AuditEntry).where(AuditEntry.api_key_id == reader.api_key_id)
    )
    assert entry is not None
    assert entry.action == "read_personal_data contact"
    assert entry.target == {"id": str(subject), "fields": "name,phone"}


async def _named_contact(
    session: AsyncSession,
    runtime: Runtime,
    tenant_id: uuid.UUID,
    name: str | None,
    *,
    owner: str | None = None,
    phone: str | None = None,
) -> uuid.UUID:
    contact = Contact(
        tenant_id=tenant_id,
        owner_staff_userid=owner,
        name_enc=runtime.cipher.encrypt(name, context=name_context(tenant_id)) if name else None,
    )
    session.add(contact)
    await session.flush()
    if phone is not None:
        session.add(
            ContactIdentity(
                tenant_id=tenant_id,
                contact_id=contact.id,
                kind="phone",
                value_bidx=runtime.cipher.blind_index(
                    normalise("phone", phone), kind="phone", tenant=str(tenant_id)
                ),
                value_enc=runtime.cipher.encrypt(
                    phone, context=identity_context(tenant_id, "phone")
                ),
                source="test",
            )
        )
        await session.flush()
    return contact.id


async def _list_audits(session: AsyncSession, key_id: uuid.UUID) -> list[dict[str, object]]:
    entries = await session.scalars(
        select(AuditEntry)
        .where(
            AuditEntry.api_key_id == key_id,
            AuditEntry.action == "read_personal_data contact_list",
        )
        .order_by(AuditEntry.id)
    )
    return [dict(e.target) for e in entries]


async def test_unmasked_contact_lists_are_audited(
    client: httpx.AsyncClient, session: AsyncSession, runtime: Runtime
) -> None:
    tenant = await make_tenant(session)
    keys = {role: await make_key(session, tenant, role) for role in ("admin", "analyst", "staff")}
    ids = {
        key: (await auth.authenticate(session, f"Bearer {plain}")).api_key_id
        for key, plain in keys.items()
    }
    phone = "13812341234"
    mine = await _named_contact(session, runtime, tenant.id, "张三", owner="staff-1", phone=phone)
    theirs = await _named_contact(session, runtime, tenant.id, "李四", owner="lisi")
    await _named_contact(session, runtime, tenant.id, None, owner="staff-1")

    found = await client.get("/v1/contacts", params={"phone": phone}, headers=bearer(keys["admin"]))
    assert [(c["id"], c["name"]) for c in found.json()["items"]] == [(str(mine), "张三")]
    assert await _list_audits(session, ids["admin"]) == [
        {"ids": str(mine), "count": "1", "fields": "name", "filters": "phone"}
    ]
    everyone = await client.get("/v1/contacts", headers=bearer(keys["admin"]))
    assert len(everyone.json()["items"]) == 3
    second = (await _list_audits(session, ids["admin"]))[1]
    assert sorted(str(second["ids"]).split(",")) == sorted([str(mine), str(theirs)])
    assert second["count"] == "2" and second["filters"] == "", "nameless contacts show nothing"

    # Staff read their own contacts unmasked: audited, for those only.
    staff_list = await client.get("/v1/contacts", headers=bearer(keys["staff"]))
    assert {c["name"] for c in staff_list.json()["items"]} == {"张三", None}
    assert await _list_audits(session, ids["staff"]) == [
        {"ids": str(mine), "count": "1", "fields": "name", "filters": ""}
    ]
    # Masked pages are not unmasked reads.
    analyst_list = await client.get("/v1/contacts", headers=bearer(keys["analyst"]))
    assert {c["name"] for c in analyst_list.json()["items"]} == {"张*", "李*", None}
    assert await _list_audits(session, ids["analyst"]) == []
    empty = await client.get(
        "/v1/contacts", params={"phone": "13900000000"}, headers=bearer(keys["admin"])
    )
    assert empty.json()["items"] == []
    assert len(await _list_audits(session, ids["admin"])) == 2, "nothing shown, nothing audited"


async def test_list_audit_names_filters_not_their_values(session: AsyncSession) -> None:
    reader = principal("admin")
    subjects = [uuid.uuid4(), uuid.uuid4()]
    audit_unmasked_list(
        session,
        None,
        reader,
        subject_type="contact_list",
        subject_ids=subjects,
        fields=["name"],
        filters={"phone": "13812341234", "owner": None, "q": "张"},
    )
    await session.flush()
    entry = await session.scalar(
        select(AuditEntry).where(AuditEntry.api_key_id == reader.api_key_id)
    )
    assert entry is not None and entry.action == "read_personal_data contact_list"
    assert entry.target == {
        "ids": f"{subjects[0]},{subjects[1]}",
        "count": "2",
        "fields": "name",
        "filters": "phone,q",
    }
    assert "13812341234" not in str(entry.target) and "张" not in str(entry.target)
