"""Contact scope on every route keyed by a contact id, of every service.

The routes are enumerated from the app (every path with `{contact_id}`), so a
new one is covered without being listed here. For each: a staff key sees only
the contacts its staff member owns or follows, and anything else — another
staff member's contact, an ownerless one, an unknown id, another tenant's
contact — answers 404 `not_found`, exactly like a missing contact.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.users.models import Contact, ContactFollow
from shared import auth, scope
from shared.app import create_app
from shared.events import SERVICES
from shared.models import Tenant
from tests.helpers import bearer, make_key, make_tenant
from tests.shared.test_api_contract import assert_envelope

CONTACT_ROUTES = sorted(
    (method, context.path_format)
    for context in iter_route_contexts(create_app(SERVICES).routes)
    if isinstance(context.original_route, APIRoute)
    and "{contact_id}" in (context.path_format or "")
    for method in context.original_route.methods
)
# Values for the routes' other path parameters.
# A tag the contact does not hold: its routes answer 404 with a code of their own.
PATH_VALUES = {"code": "free_shipping", "tag_id": "1", "message_id": "1"}
# A valid body where a route needs one, so an admitted request gets past validation.
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("PATCH", "/v1/contacts/{contact_id}"): {"attributes": {"scope_test": "yes"}},
    ("POST", "/v1/contacts/{contact_id}/consent"): {"channel": "sms", "status": "opted_out"},
    ("POST", "/v1/points/accounts/{contact_id}/adjustments"): {"points": 5, "reason": "scope"},
    ("POST", "/v1/points/accounts/{contact_id}/redemptions"): {"points": 5, "reason": "scope"},
}


def test_the_routes_are_found() -> None:
    """Guards the enumeration itself: it must see the routes of both services."""
    paths = {path for _, path in CONTACT_ROUTES}
    assert "/v1/contacts/{contact_id}" in paths
    assert "/v1/points/accounts/{contact_id}/ledger" in paths
    assert ("POST", "/v1/points/accounts/{contact_id}/benefits/{code}/claims") in CONTACT_ROUTES


@dataclass
class World:
    tenant: Tenant
    admin: str
    owner: str  # staff key of "owner-u", who owns `owned`
    follower: str  # staff key of "follower-u", who follows `followed`
    nobody: str  # staff key of "nobody-u", who owns and follows nothing
    owned: uuid.UUID
    followed: uuid.UUID
    theirs: uuid.UUID  # owned by another staff member
    ownerless: uuid.UUID
    foreign: uuid.UUID  # another tenant's, owned there by a staff member also called "owner-u"


async def _staff_key(session: AsyncSession, tenant: Tenant, userid: str) -> str:
    _, plaintext = await auth.create_api_key(
        session, tenant_id=tenant.id, role="staff", staff_userid=userid
    )
    return plaintext


async def _contact(session: AsyncSession, tenant: Tenant, owner: str | None) -> uuid.UUID:
    contact = Contact(tenant_id=tenant.id, owner_staff_userid=owner)
    session.add(contact)
    await session.flush()
    return contact.id


async def make_world(session: AsyncSession) -> World:
    tenant, other = await make_tenant(session), await make_tenant(session)
    followed = await _contact(session, tenant, "someone-else")
    session.add(
        ContactFollow(
            tenant_id=tenant.id, contact_id=followed, staff_userid="follower-u", status="active"
        )
    )
    world = World(
        tenant=tenant,
        admin=await make_key(session, tenant, "admin"),
        owner=await _staff_key(session, tenant, "owner-u"),
        follower=await _staff_key(session, tenant, "follower-u"),
        nobody=await _staff_key(session, tenant, "nobody-u"),
        owned=await _contact(session, tenant, "owner-u"),
        followed=followed,
        theirs=await _contact(session, tenant, "someone-else"),
        ownerless=await _contact(session, tenant, None),
        foreign=await _contact(session, other, "owner-u"),
    )
    await session.flush()
    return world


def _path(template: str, contact_id: uuid.UUID) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "contact_id":
            return str(contact_id)
        if name not in PATH_VALUES:
            pytest.fail(f"{template}: add a value for {{{name}}} to PATH_VALUES")
        return PATH_VALUES[name]

    return re.sub(r"\{(\w+)\}", value, template)


async def _call(
    client: httpx.AsyncClient, method: str, template: str, contact_id: uuid.UUID, key: str
) -> httpx.Response:
    body = BODIES.get((method, template), {}) if method in ("POST", "PUT", "PATCH") else None
    return await client.request(method, _path(template, contact_id), json=body, headers=bearer(key))


@pytest.mark.parametrize(("method", "template"), CONTACT_ROUTES)
async def test_contact_scope(
    client: httpx.AsyncClient, session: AsyncSession, method: str, template: str
) -> None:
    world = await make_world(session)
    unknown = await _call(client, method, template, uuid.uuid4(), world.admin)
    assert_envelope(unknown, 404, "not_found")
    foreign = await _call(client, method, template, world.foreign, world.admin)
    assert_envelope(foreign, 404, "not_found")
    assert foreign.json() == unknown.json(), "another tenant's contact looks like a missing one"

    # Refusals first: they must change nothing the admitted requests below depend on.
    staff_admitted = (
        await _call(client, method, template, uuid.uuid4(), world.nobody)
    ).status_code != 403
    for contact in (world.theirs, world.ownerless, world.foreign):
        refused = await _call(client, method, template, contact, world.nobody)
        if staff_admitted:
            assert refused.json() == unknown.json(), (contact, refused.text)
        else:
            assert_envelope(refused, 403, "forbidden")
    owner_on_theirs = await _call(client, method, template, world.theirs, world.owner)
    if staff_admitted:
        assert owner_on_theirs.json() == unknown.json()
        owner_on_foreign = await _call(client, method, template, world.foreign, world.owner)
        assert owner_on_foreign.json() == unknown.json(), "the same userid in another tenant"

    for contact, key in ((world.owned, world.owner), (world.followed, world.follower)):
        answer = await _call(client, method, template, contact, key)
        if staff_admitted:
            assert _admitted(answer), answer.text
        else:
            assert_envelope(answer, 403, "forbidden")
    admin = await _call(client, method, template, world.ownerless, world.admin)
    assert _admitted(admin), admin.text


def _admitted(answer: httpx.Response) -> bool:
    """Past the scope: any answer but the unknown contact's (a 404 of the route's own,
    such as a tag the contact does not hold, is past it)."""
    if answer.status_code >= 500:
        return False
    return answer.status_code != 404 or answer.json()["error"]["code"] != "not_found"


async def _credit(client: httpx.AsyncClient, world: World, contact: uuid.UUID) -> None:
    response = await client.post(
        f"/v1/points/accounts/{contact}/adjustments",
        json={"points": 100, "reason": "welcome"},
        headers=bearer(world.admin),
    )
    assert response.status_code == 201, response.text


async def _balance(client: httpx.AsyncClient, world: World, contact: uuid.UUID) -> int:
    response = await client.get(f"/v1/points/accounts/{contact}", headers=bearer(world.admin))
    assert response.status_code == 200, response.text
    value: int = response.json()["balance"]
    return value


async def _count(session: AsyncSession, sql: str, **params: object) -> int:
    return int(await session.scalar(text(sql), params) or 0)


async def test_refused_spending_and_claims_change_nothing(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    world = await make_world(session)
    for contact in (world.owned, world.theirs, world.ownerless):
        await _credit(client, world, contact)
    entries = await _count(session, "SELECT count(*) FROM points_ledger")
    audited = await _count(session, "SELECT count(*) FROM audit_log")
    for contact in (world.theirs, world.ownerless, uuid.uuid4()):
        for key in (world.nobody, world.owner):
            spent = await client.post(
                f"/v1/points/accounts/{contact}/redemptions",
                json={"points": 10, "reason": "coupon"},
                headers={**bearer(key), "Idempotency-Key": uuid.uuid4().hex},
            )
            assert_envelope(spent, 404, "not_found")
            claimed = await client.post(
                f"/v1/points/accounts/{contact}/benefits/free_shipping/claims",
                headers=bearer(key),
            )
            assert_envelope(claimed, 404, "not_found")
    unknown_claim = await client.post(
        f"/v1/points/accounts/{uuid.uuid4()}/benefits/free_shipping/claims",
        headers=bearer(world.admin),
    )
    assert_envelope(unknown_claim, 404, "not_found")
    assert await _balance(client, world, world.theirs) == 100
    assert await _balance(client, world, world.ownerless) == 100
    assert await _count(session, "SELECT count(*) FROM points_benefit_claims") == 0
    assert await _count(session, "SELECT count(*) FROM points_ledger") == entries
    assert await _count(session, "SELECT count(*) FROM audit_log") == audited, (
        "refused requests are not audited"
    )

    # The owner may: the points move and the claim is kept, audited once per request.
    spent = await client.post(
        f"/v1/points/accounts/{world.owned}/redemptions",
        json={"points": 10, "reason": "coupon"},
        headers=bearer(world.owner),
    )
    assert spent.status_code == 201, spent.text
    claimed = await client.post(
        f"/v1/points/accounts/{world.owned}/benefits/free_shipping/claims",
        headers=bearer(world.owner),
    )
    assert claimed.status_code == 201, claimed.text
    assert await _balance(client, world, world.owned) == 90
    assert await _count(session, "SELECT count(*) FROM points_benefit_claims") == 1
    assert await _count(session, "SELECT count(*) FROM audit_log") == audited + 2, (
        "the key is checked once per request, not once for the route and once for the scope"
    )


async def test_merged_contacts_answer_as_before(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    """A merged contact is still the tenant's: its detail shows where it went, and the
    points routes answer it as their own rule says (no points move for it)."""
    world = await make_world(session)
    merged = Contact(
        tenant_id=world.tenant.id, owner_staff_userid="owner-u", merged_into_id=world.owned
    )
    session.add(merged)
    await session.flush()
    for key in (world.admin, world.owner):
        detail = await client.get(f"/v1/contacts/{merged.id}", headers=bearer(key))
        assert detail.status_code == 200 and detail.json()["merged_into"] == str(world.owned)
    refused = await client.post(
        f"/v1/points/accounts/{merged.id}/redemptions",
        json={"points": 1, "reason": "coupon"},
        headers=bearer(world.owner),
    )
    error = assert_envelope(refused, 404, "contact_not_found")
    assert str(world.owned) in str(error["message"])
    hidden = await client.get(f"/v1/contacts/{merged.id}", headers=bearer(world.nobody))
    assert_envelope(hidden, 404, "not_found")


async def test_no_registered_resolver_fails_loudly(
    client: httpx.AsyncClient, session: AsyncSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the users service's rule nobody is let through: the request fails (500)."""
    world = await make_world(session)
    assert scope.registered_contact_resolver() is not None, "services.users registers it"
    monkeypatch.setattr(scope, "_resolver", None)
    for key in (world.admin, world.owner):
        read = await client.get(f"/v1/points/accounts/{world.owned}", headers=bearer(key))
        assert_envelope(read, 500, "internal_error")
    patched = await client.patch(
        f"/v1/contacts/{world.owned}", json={"attributes": {"x": "y"}}, headers=bearer(world.admin)
    )
    assert_envelope(patched, 500, "internal_error")
    monkeypatch.undo()
    detail = await client.get(f"/v1/contacts/{world.owned}", headers=bearer(world.admin))
    assert detail.status_code == 200 and detail.json()["attributes"] == {}
