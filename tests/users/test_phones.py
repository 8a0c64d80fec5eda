"""Phone numbers: validated and stored as E.164 the same way on every path in, and
found by any writing of the number, including the forms earlier versions stored."""

from __future__ import annotations

import csv
import io
import uuid
from typing import Any

import httpx
import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from services.users.identity import identity_context, normalise
from services.users.models import Contact, ContactIdentity
from shared.db import unit_of_work
from shared.errors import InvalidInput
from shared.models import Tenant
from shared.runtime import Runtime
from tests.helpers import bearer, make_key
from tests.users.support import WeComTenant, post, process_all, wecom_tenant


@pytest.fixture
async def corp(committed: Runtime) -> WeComTenant:
    return await wecom_tenant(committed)


FULL_WIDTH = "13800138000".translate({ord(d): ord(d) + 0xFEE0 for d in "0123456789"})


@pytest.mark.parametrize(
    ("written", "stored"),
    [
        ("13800138000", "+8613800138000"),
        ("+86 138 0013 8000", "+8613800138000"),
        ("+86-138-0013-8000", "+8613800138000"),
        ("008613800138000", "+8613800138000"),
        ("8613800138000", "+8613800138000"),
        ("(138) 0013 8000", "+8613800138000"),
        (FULL_WIDTH, "+8613800138000"),
        ("010-1234-5678", "+861012345678"),  # a Beijing landline
        ("+44 7911 123456", "+447911123456"),
    ],
)
def test_valid_numbers_are_stored_as_e164(written: str, stored: str) -> None:
    assert normalise("phone", written) == stored


@pytest.mark.parametrize(
    "written",
    [
        "12345",
        "1390000000599999",  # a mobile number with five digits too many
        "1380013800",  # one too few
        "not-a-phone",
        "1-800-FLOWERS",  # letters are not digits here
        "13800138000 ext. 12",
        "13800138000\x00",
        "",
    ],
)
def test_invalid_numbers_are_refused(written: str) -> None:
    with pytest.raises(InvalidInput, match="invalid phone number"):
        normalise("phone", written)


def library_answer(written: str) -> str | None:
    """What phonenumbers itself makes of a writing: E.164, or None if no valid number."""
    try:
        number = phonenumbers.parse(written, "CN")
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


@settings(max_examples=2000, deadline=None)
@given(
    prefix=st.sampled_from(["", "+86", "0086", "+86 ", "86", "0", "+852"]),
    digits=st.text("0123456789", min_size=9, max_size=13),
    lead=st.sampled_from(["1", "13", "17", "179", "11", "12", "19", "2", "0"]),
    separator=st.sampled_from(["", " ", "-"]),
)
def test_phones_are_what_the_phonenumbers_library_says(
    prefix: str, digits: str, lead: str, separator: str
) -> None:
    # Whatever shortcut normalise takes for common numbers, its answer is the library's.
    national = lead + digits
    written = prefix + separator.join([national[:3], national[3:7], national[7:]])
    try:
        ours: str | None = normalise("phone", written)
    except InvalidInput:
        ours = None
    assert ours == library_answer(written)


def event(event_id: str, phone: str) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "type": "checkin",
        "occurred_at": "2026-11-20T10:00:00+08:00",
        "contact": {"phone": phone},
    }


def csv_body(*rows: list[str]) -> bytes:
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return out.getvalue().encode()


async def operator_key(runtime: Runtime, corp: WeComTenant) -> str:
    async with unit_of_work(runtime.sessionmaker) as session:
        return await make_key(session, await session.get(Tenant, corp.tenant_id), "operator")


async def import_csv(client: httpx.AsyncClient, key: str, body: bytes) -> dict[str, Any]:
    response = await client.post(
        "/v1/contacts/import", content=body, headers={**bearer(key), "content-type": "text/csv"}
    )
    assert response.status_code == 200, response.text
    report: dict[str, Any] = response.json()
    return report


async def contacts_by_phone(client: httpx.AsyncClient, key: str, phone: str) -> list[str]:
    response = await client.get("/v1/contacts", params={"phone": phone}, headers=bearer(key))
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


async def phones_of(client: httpx.AsyncClient, key: str, contact_id: str) -> list[str]:
    detail = (await client.get(f"/v1/contacts/{contact_id}", headers=bearer(key))).json()
    return sorted(i["value"] for i in detail["identities"] if i["kind"] == "phone")


async def count(runtime: Runtime, sql: str) -> int:
    async with runtime.engine.connect() as conn:
        return int((await conn.execute(text(sql))).scalar() or 0)


async def test_every_path_in_stores_one_contact_with_the_e164_number(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant
) -> None:
    operator = await operator_key(committed, corp)
    webhook = await post(committed_client, corp.signed(event("p1", "13800138000")))
    assert webhook.status_code == 202, webhook.text
    api = await committed_client.post(
        "/v1/events", json=event("p2", "+86 138 0013 8000"), headers=bearer(operator)
    )
    assert api.status_code == 202, api.text
    await process_all(committed)
    report = await import_csv(
        committed_client, operator, csv_body(["phone", "name"], ["0086 138-0013-8000", "Wang"])
    )
    assert (report["created"], report["updated"], report["rejected"]) == (0, 1, [])
    assert await count(committed, "SELECT count(*) FROM contacts") == 1
    for writing in ("13800138000", "+8613800138000", "+86 138 0013 8000", "8613800138000"):
        [contact_id] = await contacts_by_phone(committed_client, corp.admin, writing)
    assert await phones_of(committed_client, corp.admin, contact_id) == ["+8613800138000"]


async def test_the_import_refuses_numbers_that_do_not_exist(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant
) -> None:
    body = csv_body(
        ["phone", "name"],
        ["12345", "Too short"],
        ["1390000000599999", "Too long"],
        ["+86 139 0000 0005", "Fine"],
    )
    report = await import_csv(committed_client, corp.admin, body)
    assert report["created"] == 1
    reasons = {r["line"]: r["reason"] for r in report["rejected"]}
    assert sorted(reasons) == [2, 3]
    assert all(reason.startswith("invalid phone number") for reason in reasons.values())
    [contact_id] = await contacts_by_phone(committed_client, corp.admin, "13900000005")
    assert await phones_of(committed_client, corp.admin, contact_id) == ["+8613900000005"]


async def test_a_contacts_phone_filter_that_is_no_number_is_refused(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant
) -> None:
    response = await committed_client.get(
        "/v1/contacts", params={"phone": "12345"}, headers=bearer(corp.admin)
    )
    assert response.status_code == 422
    assert "invalid phone number" in response.json()["error"]["message"]


@pytest.mark.parametrize("old_form", ["13800138000", "01012345678", "8613800138000"])
async def test_numbers_stored_by_earlier_versions_are_still_found(
    committed: Runtime, committed_client: httpx.AsyncClient, corp: WeComTenant, old_form: str
) -> None:
    # Earlier versions stored (and blind-indexed) the number as sent, less separators,
    # with +86 dropped from 11-digit Chinese numbers.
    contact_id = uuid.uuid4()
    async with unit_of_work(committed.sessionmaker) as session:
        session.add(Contact(id=contact_id, tenant_id=corp.tenant_id))
        await session.flush()
        session.add(
            ContactIdentity(
                tenant_id=corp.tenant_id,
                contact_id=contact_id,
                kind="phone",
                value_bidx=committed.cipher.blind_index(
                    old_form, kind="phone", tenant=str(corp.tenant_id)
                ),
                value_enc=committed.cipher.encrypt(
                    old_form, context=identity_context(corp.tenant_id, "phone")
                ),
                source="webhook",
            )
        )
    e164 = normalise("phone", old_form)
    assert await contacts_by_phone(committed_client, corp.admin, e164) == [str(contact_id)]
    assert (await post(committed_client, corp.signed(event("old-1", e164)))).status_code == 202
    await process_all(committed)
    report = await import_csv(
        committed_client, corp.admin, csv_body(["phone", "name"], [e164, "Li"])
    )
    assert (report["created"], report["updated"]) == (0, 1)
    assert await count(committed, "SELECT count(*) FROM contacts") == 1
    assert await count(committed, "SELECT count(*) FROM contact_identities") == 1, (
        "the old identity is the contact's phone: no second one in the new form"
    )
    timeline = (
        await committed_client.get(f"/v1/contacts/{contact_id}/events", headers=bearer(corp.admin))
    ).json()
    assert [e["source_event_id"] for e in timeline["items"]] == ["old-1"]
