"""Expiry of points: due lots expire set-based, and members are warned in advance.

Both run for every tenant at once, in batches of accounts: no Python loop over
rows. Accounts are locked first (in id order, as everywhere), then their lots.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from shared.events import NOTIFY_CHANNEL

BATCH = 1000

# One batch: lock up to BATCH accounts that have due lots, zero those lots,
# book one 'expire' entry per lot (with its lot move) and lower the balances.
_LOCK_BATCH = text(
    """
    SELECT id FROM points_accounts
     WHERE id IN (SELECT DISTINCT account_id FROM points_lots
                   WHERE remaining > 0 AND expires_at <= :now
                   ORDER BY account_id LIMIT :batch)
     ORDER BY id FOR UPDATE
    """
)

# Run after _LOCK_BATCH, as a statement of its own: it then sees the lots as
# the locked accounts' last writers left them.
_EXPIRE_BATCH = text(
    """
    WITH accounts AS (
        SELECT unnest(CAST(:accounts AS bigint[])) AS id
    ), due AS (
        SELECT l.id, l.tenant_id, l.account_id, l.remaining, l.expires_at,
               a.balance - sum(l.remaining) OVER (
                   PARTITION BY l.account_id ORDER BY l.expires_at, l.id
               ) AS balance_after
          FROM points_lots l JOIN points_accounts a ON a.id = l.account_id
         WHERE l.account_id IN (SELECT id FROM accounts)
           AND l.remaining > 0 AND l.expires_at <= :now
    ), emptied AS (
        UPDATE points_lots l SET remaining = 0 FROM due WHERE l.id = due.id
        RETURNING l.id
    ), entries AS (
        INSERT INTO points_ledger (tenant_id, account_id, kind, points, balance_after, reason,
                                   source_key, details)
        SELECT tenant_id, account_id, 'expire', -remaining, balance_after,
               'points earned ' || to_char(expires_at, 'YYYY-MM-DD') || ' expired',
               'expire:lot:' || id, jsonb_build_object('lot_id', id)
          FROM due
         ORDER BY account_id, expires_at, id
        RETURNING id, tenant_id, account_id, points, (details->>'lot_id')::bigint AS lot_id
    ), moves AS (
        INSERT INTO points_lot_moves (tenant_id, entry_id, lot_id, points)
        SELECT tenant_id, id, lot_id, points FROM entries
    ), balances AS (
        UPDATE points_accounts a SET balance = a.balance - d.total, updated_at = now()
          FROM (SELECT account_id, sum(remaining) AS total FROM due GROUP BY account_id) d
         WHERE a.id = d.account_id
        RETURNING a.id
    )
    SELECT (SELECT count(*) FROM emptied) AS lots,
           (SELECT COALESCE(sum(remaining), 0) FROM due) AS points
    """
)


async def expire_due(session: AsyncSession, now: datetime | None = None) -> int:
    """Expire every lot due by `now`; the number of lots expired."""
    at = now or datetime.now(UTC)
    total = 0
    while True:
        accounts = list((await session.execute(_LOCK_BATCH, {"now": at, "batch": BATCH})).scalars())
        if not accounts:
            return total
        row = (await session.execute(_EXPIRE_BATCH, {"now": at, "accounts": accounts})).one()
        total += int(row.lots)
        if len(accounts) < BATCH:
            return total


# One notice (and one points.expiring event) per account and local expiry date,
# for lots expiring within the tenant's warning window; the unique key makes a
# second run add nothing.
_WARN = text(
    """
    WITH windows AS (
        SELECT t.id AS tenant_id, t.timezone,
               COALESCE((c.config->>'expiry_warning_days')::int, 30) AS days,
               COALESCE(c.config->'expiry_channels',
                        '["in_app", "sms", "wecom_template"]'::jsonb) AS channels
          FROM tenants t LEFT JOIN points_config c ON c.tenant_id = t.id
    ), coming AS (
        SELECT l.tenant_id, l.account_id, a.contact_id,
               (l.expires_at AT TIME ZONE w.timezone)::date AS expires_on,
               sum(l.remaining) AS points, w.channels
          FROM points_lots l
          JOIN points_accounts a ON a.id = l.account_id
          JOIN windows w ON w.tenant_id = l.tenant_id
         WHERE l.remaining > 0 AND l.expires_at > :now
           AND l.expires_at <= :now + make_interval(days => w.days)
         GROUP BY l.tenant_id, l.account_id, a.contact_id, 4, w.channels
    ), noticed AS (
        INSERT INTO points_expiry_notices (tenant_id, account_id, contact_id, expires_on,
                                           points, channels)
        SELECT tenant_id, account_id, contact_id, expires_on, points, channels FROM coming
        ON CONFLICT ON CONSTRAINT uq_points_expiry_notice DO NOTHING
        RETURNING id, tenant_id, contact_id, expires_on, points, channels
    ), published AS (
        INSERT INTO outbox_events (event_id, tenant_id, type, payload)
        SELECT gen_random_uuid(), tenant_id, 'points.expiring',
               jsonb_build_object('contact_id', contact_id, 'expires_on', expires_on,
                                  'points', points, 'channels', channels, 'notice_id', id)
          FROM noticed
    )
    SELECT count(*) FROM noticed
    """
)


async def warn_expiring(session: AsyncSession, now: datetime | None = None) -> int:
    """Store (and announce) the notices due by `now`; how many were new."""
    count = await session.scalar(_WARN, {"now": now or datetime.now(UTC)})
    if count:
        await session.execute(text(f"NOTIFY {NOTIFY_CHANNEL}"))
    return int(count or 0)


async def expire_account(session: AsyncSession, account_id: int) -> int:
    """Expire one locked account's due lots now (before it spends); points expired."""
    row = (
        await session.execute(_EXPIRE_BATCH, {"now": datetime.now(UTC), "accounts": [account_id]})
    ).one()
    return int(row.points)


async def list_notices(
    session: AsyncSession, tenant_id: uuid.UUID, *, before: int | None, limit: int
) -> list[dict[str, Any]]:
    rows = await session.execute(
        text(
            "SELECT id, contact_id, expires_on, points, channels, created_at"
            " FROM points_expiry_notices WHERE tenant_id = :t"
            " AND (CAST(:before AS bigint) IS NULL OR id < :before)"
            " ORDER BY id DESC LIMIT :limit"
        ),
        {"t": tenant_id, "before": before, "limit": limit},
    )
    return [dict(r) for r in rows.mappings()]
