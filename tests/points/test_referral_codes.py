"""Invite codes over HTTP: made on the first request and stable afterwards (also for
20 requests at once), unguessable in form, a merged contact answered with its
survivor's, and a code of another tenant unknown."""

from __future__ import annotations

import asyncio
import re
import uuid

import httpx
from sqlalchemy import update

from services.points.referrals import codes
from services.users.models import Contact
from shared.db import unit_of_work
from shared.runtime import Runtime
from tests.helpers import bearer, make_key, make_tenant


async def _contacts(runtime: Runtime, tenant_id: uuid.UUID, n: int) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in range(n)]
    async with unit_of_work(runtime.sessionmaker) as session:
        session.add_all(Contact(id=i, tenant_id=tenant_id) for i in ids)
    return ids


async def test_a_contacts_code_is_made_once_and_stays(
    committed: Runtime, committed_client: httpx.AsyncClient
) -> None:
    async with unit_of_work(committed.sessionmaker) as session:
        tenant = await make_tenant(session)
        other = await make_tenant(session)
        h = bearer(await make_key(session, tenant, "operator"))
        other_h = bearer(await make_key(session, other, "operator"))
    alice, bob, merged = await _contacts(committed, tenant.id, 3)
    answers = await asyncio.gather(
        *(committed_client.get(f"/v1/points/referrals/codes/{alice}", headers=h) for _ in range(20))
    )
    assert {a.status_code for a in answers} == {200}
    assert len({a.json()["code"] for a in answers}) == 1, "one code however many ask at once"
    first = answers[0].json()
    assert re.fullmatch(codes.CODE_PATTERN, first["code"])
    assert first["link"] == f"https://scrm.example.com/r/{first['code']}"
    again = await committed_client.get(f"/v1/points/referrals/codes/{alice}", headers=h)
    assert again.json() == first
    bobs = (await committed_client.get(f"/v1/points/referrals/codes/{bob}", headers=h)).json()
    assert bobs["code"] != first["code"]
    # A merged contact shares its survivor's code.
    async with unit_of_work(committed.sessionmaker) as session:
        await session.execute(
            update(Contact).where(Contact.id == merged).values(merged_into_id=bob)
        )
    follows = (await committed_client.get(f"/v1/points/referrals/codes/{merged}", headers=h)).json()
    assert follows["code"] == bobs["code"] and follows["contact_id"] == str(bob)
    # Another tenant's contact, or an unknown one, is not found; codes stay in their tenant.
    for contact, headers in ((alice, other_h), (uuid.uuid4(), h)):
        missing = await committed_client.get(
            f"/v1/points/referrals/codes/{contact}", headers=headers
        )
        assert missing.status_code == 404
    async with unit_of_work(committed.sessionmaker) as session:
        assert await codes.inviter_of(session, tenant.id, first["code"]) == alice
        assert await codes.inviter_of(session, other.id, first["code"]) is None


def test_codes_are_drawn_from_the_whole_alphabet() -> None:
    drawn = {codes.new_code() for _ in range(2000)}
    assert len(drawn) == 2000
    assert set("".join(drawn)) == set(codes.ALPHABET)
    assert len(codes.ALPHABET) == 32 and not set("01IO") & set(codes.ALPHABET)
