"""Masking policy: analysts never see personal data; staff only for their own contacts."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.auth import Principal, Role
from shared.models import AuditEntry
from shared.privacy import audit_unmasked_read, mask, present


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
        ("+8613812341234", "phone", "+86****1234"),
        ("12345", "phone", "*****"),
        ("张三丰", "name", "张**"),
        ("Li", "name", "L*"),
        ("wang@example.com", "email", "w***@example.com"),
        ("oAbCdEfGhIjKlMnOp", "identifier", "oAbC****MnOp"),
        ("short", "identifier", "****"),
        ("上海市浦东新区世纪大道100号", "address", "上海市浦东新****"),
        ("", "phone", ""),
    ],
)
def test_mask(value: str, kind: str, masked: str) -> None:
    assert mask(value, kind) == masked  # type: ignore[arg-type]


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
