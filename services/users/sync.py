"""Reconciliation with the WeCom API: enrich contacts, sync groups, repair missed callbacks.

Everything here is an upsert keyed by WeCom's own ids, so running it again (or
after the callbacks it repairs did arrive) changes nothing.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import func, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.users import repository
from services.users.identity import identity_context, name_context, name_grams, resolve
from services.users.models import Contact
from services.users.settings import users_settings
from services.users.wecom_client import RedisTokenCache, WeComClient
from shared.events import publish
from shared.runtime import runtime_of

log = logging.getLogger("scrm.users.sync")


async def client_for(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    *,
    max_retries: int = 4,
    http: httpx.AsyncClient | None = None,
) -> WeComClient | None:
    """A WeCom API client for the tenant, or None without an app secret."""
    settings = await repository.wecom_settings(session, tenant_id)
    if settings is None or settings.secret_enc is None:
        return None
    runtime = runtime_of(session)
    from services.users.service import wecom_secret

    return WeComClient(
        corp_id=settings.corp_id,
        secret=wecom_secret(runtime.cipher, tenant_id, settings.secret_enc),
        base_url=users_settings().wecom_api_base,
        token_cache=RedisTokenCache(runtime.redis, f"{runtime.settings.queue_prefix}:wecom-token"),
        max_retries=max_retries,
        http=http,
    )


async def external_userid_of(
    session: AsyncSession, tenant_id: uuid.UUID, contact_id: uuid.UUID
) -> str | None:
    cipher = runtime_of(session).cipher
    for identity in await repository.identities_of(session, tenant_id, contact_id):
        if identity.kind == "external_userid":
            return cipher.decrypt(
                identity.value_enc, context=identity_context(tenant_id, "external_userid")
            )
    return None


def _ts(value: Any) -> datetime | None:
    try:
        return datetime.fromtimestamp(int(value), UTC)
    except (TypeError, ValueError):
        return None


async def apply_contact(
    session: AsyncSession, tenant_id: uuid.UUID, data: dict[str, Any], follows: list[dict[str, Any]]
) -> uuid.UUID:
    """Store what the API says of one external contact and its followers."""
    cipher = runtime_of(session).cipher
    profile = data.get("external_contact", data)
    identities = {"external_userid": str(profile["external_userid"])}
    if profile.get("unionid"):
        identities["unionid"] = str(profile["unionid"])
    found = await resolve(session, cipher, tenant_id, identities, source="wecom_api")
    assert found is not None
    values: dict[str, Any] = {
        "avatar_url": profile.get("avatar"),
        "gender": profile.get("gender"),
        "contact_type": profile.get("type"),
        "corp_name": profile.get("corp_name"),
        "enriched_at": func.now(),
        "updated_at": func.now(),
    }
    name = profile.get("name")
    if name:
        values["name_enc"] = cipher.encrypt(str(name), context=name_context(tenant_id))
        values["name_grams"] = name_grams(cipher, tenant_id, str(name))
    await session.execute(update(Contact).where(Contact.id == found.contact_id).values(**values))
    profile_changed = False
    for follow in follows:
        userid = follow.get("userid")
        if not userid:
            continue
        await repository.upsert_staff(session, tenant_id, str(userid))
        await repository.upsert_follow(
            session,
            tenant_id,
            found.contact_id,
            str(userid),
            status="active",
            remark=follow.get("remark") or None,
            state=follow.get("state") or None,
            add_way=follow.get("add_way"),
            added_at=_ts(follow.get("createtime")),
        )
        profile_changed |= await repository.claim_owner(
            session, found.contact_id, str(userid), follow.get("state") or None
        )
    if profile_changed:
        await repository.publish_profiles(session, [found.contact_id])
    return found.contact_id


async def apply_group(session: AsyncSession, tenant_id: uuid.UUID, chat: dict[str, Any]) -> None:
    """Store a group and reconcile its members, emitting joins and departures."""
    chat_id = str(chat["chat_id"])
    members = chat.get("member_list") or []
    await repository.upsert_group(
        session,
        tenant_id,
        chat_id,
        name=chat.get("name"),
        owner_userid=chat.get("owner"),
        member_count=len(members),
        status="active",
    )
    cipher = runtime_of(session).cipher
    current = await repository.group_member_ids(session, tenant_id, chat_id)
    seen: set[str] = set()
    now = datetime.now(UTC)
    for member in members:
        member_id = str(member.get("userid", ""))
        if not member_id:
            continue
        seen.add(member_id)
        if member_id in current:
            continue
        external = int(member.get("type", 1)) == 2
        contact_id = None
        if external:
            ids = {"external_userid": member_id}
            if member.get("unionid"):
                ids["unionid"] = str(member["unionid"])
            found = await resolve(session, cipher, tenant_id, ids, source="wecom_api")
            contact_id = found.contact_id if found else None
        joined = await repository.join_group(
            session,
            tenant_id,
            chat_id,
            member_id,
            member_type=2 if external else 1,
            contact_id=contact_id,
            joined_at=_ts(member.get("join_time")),
            join_scene=member.get("join_scene"),
        )
        if joined and contact_id is not None:
            await publish(
                session,
                "group.joined",
                {"chat_id": chat_id, "contact_id": str(contact_id), "occurred_at": now.isoformat()},
                tenant_id=tenant_id,
            )
    for member_id in current - seen:
        left = await repository.leave_group(session, tenant_id, chat_id, member_id, now)
        if left:
            await publish(
                session,
                "group.left",
                {"chat_id": chat_id, "contact_id": str(left), "occurred_at": now.isoformat()},
                tenant_id=tenant_id,
            )


async def full_sync(
    session: AsyncSession, tenant_id: uuid.UUID, client: WeComClient
) -> dict[str, int]:
    """Staff, contacts and groups through the list APIs (cursor paging)."""
    counts = {"staff": 0, "contacts": 0, "groups": 0}
    staff = await client.get_follow_user_list()
    for userid in staff:
        await repository.upsert_staff(session, tenant_id, userid)
    counts["staff"] = len(staff)
    async for item in client.iterate_external_contacts(staff):
        follow = item.get("follow_info")
        await apply_contact(session, tenant_id, item, [follow] if follow else [])
        counts["contacts"] += 1
    async for listed in client.iterate_group_chats():
        await apply_group(session, tenant_id, await client.get_group_chat(str(listed["chat_id"])))
        counts["groups"] += 1
    return counts
