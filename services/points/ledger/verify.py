"""`scrm points verify`: the ledger's invariants, checked over every account of a tenant.

balance = sum of the account's entries = sum of its lots' remaining points
debt    = sum of its entries' debt_delta
each lot: remaining = points + the moves booked against it, 0 <= remaining <= points
each entry: balance_after = the running sum of the account's points up to it

and the referral rewards' (services/points/referrals):

each points reward paid = its ledger earning's points
each reward clawed back = what its clawback entry took (from the balance and as a debt)
no reward of a revoked referral left unclawed
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

_CHECKS: dict[str, str] = {
    "balance_vs_entries": """
        SELECT a.id, a.contact_id, a.balance, COALESCE(e.total, 0) AS other
          FROM points_accounts a
          LEFT JOIN (SELECT account_id, sum(points) AS total FROM points_ledger
                      WHERE tenant_id = :t GROUP BY account_id) e ON e.account_id = a.id
         WHERE a.tenant_id = :t AND a.balance <> COALESCE(e.total, 0)
    """,
    "balance_vs_lots": """
        SELECT a.id, a.contact_id, a.balance, COALESCE(l.total, 0) AS other
          FROM points_accounts a
          LEFT JOIN (SELECT account_id, sum(remaining) AS total FROM points_lots
                      WHERE tenant_id = :t GROUP BY account_id) l ON l.account_id = a.id
         WHERE a.tenant_id = :t AND a.balance <> COALESCE(l.total, 0)
    """,
    "debt_vs_entries": """
        SELECT a.id, a.contact_id, a.debt, COALESCE(e.total, 0) AS other
          FROM points_accounts a
          LEFT JOIN (SELECT account_id, sum(debt_delta) AS total FROM points_ledger
                      WHERE tenant_id = :t GROUP BY account_id) e ON e.account_id = a.id
         WHERE a.tenant_id = :t AND a.debt <> COALESCE(e.total, 0)
    """,
    "negative": """
        SELECT a.id, a.contact_id, a.balance, a.debt AS other FROM points_accounts a
         WHERE a.tenant_id = :t AND (a.balance < 0 OR a.debt < 0)
    """,
    "lot_vs_moves": """
        SELECT l.account_id AS id, l.id AS contact_id, l.remaining AS balance,
               l.points + COALESCE(m.total, 0) AS other
          FROM points_lots l
          LEFT JOIN (SELECT lot_id, sum(points) AS total FROM points_lot_moves
                      WHERE tenant_id = :t GROUP BY lot_id) m ON m.lot_id = l.id
         WHERE l.tenant_id = :t
           AND (l.remaining <> l.points + COALESCE(m.total, 0)
                OR l.remaining < 0 OR l.remaining > l.points)
    """,
    "running_balance": """
        SELECT account_id AS id, id AS contact_id, balance_after AS balance, running AS other
          FROM (SELECT account_id, id, balance_after,
                       sum(points) OVER (PARTITION BY account_id ORDER BY id) AS running
                  FROM points_ledger WHERE tenant_id = :t) r
         WHERE balance_after <> running
    """,
}


# (reward or referral id, contact, value, expected)
_REFERRAL_CHECKS: dict[str, str] = {
    "referral_reward_vs_entry": """
        SELECT w.id, w.contact_id, w.points AS balance, COALESCE(e.points, 0) AS other
          FROM referral_rewards w
          LEFT JOIN points_ledger e ON e.id = w.entry_id
         WHERE w.tenant_id = :t AND w.kind = 'points' AND w.granted_at IS NOT NULL
           AND COALESCE(e.points, 0) <> w.points
    """,
    "referral_clawback_vs_entry": """
        SELECT w.id, w.contact_id, w.clawback_points AS balance,
               COALESCE(e.debt_delta - e.points, 0) AS other
          FROM referral_rewards w
          LEFT JOIN points_ledger e ON e.id = w.clawback_entry_id
         WHERE w.tenant_id = :t AND w.status = 'clawed_back' AND w.clawback_points > 0
           AND COALESCE(e.debt_delta - e.points, 0) <> w.clawback_points
    """,
    "revoked_referral_rewards": """
        SELECT f.id, f.invitee_id AS contact_id, count(*) AS balance, 0 AS other
          FROM referrals f JOIN referral_rewards w ON w.referral_id = f.id
         WHERE f.tenant_id = :t AND f.status = 'revoked' AND w.status <> 'clawed_back'
         GROUP BY f.id, f.invitee_id
    """,
}


@dataclass(frozen=True)
class Violation:
    check: str
    account_id: int
    subject: str
    value: int
    expected: int
    unit: str = "account"

    def __str__(self) -> str:
        return (
            f"{self.check}: {self.unit} {self.account_id} ({self.subject}): "
            f"{self.value} where {self.expected} was expected"
        )


async def verify_tenant(session: AsyncSession, tenant_id: uuid.UUID) -> tuple[int, list[Violation]]:
    """(accounts checked, every violation found)."""
    accounts = int(
        await session.scalar(
            text("SELECT count(*) FROM points_accounts WHERE tenant_id = :t"), {"t": tenant_id}
        )
        or 0
    )
    found: list[Violation] = []
    for name, sql in _CHECKS.items():
        rows = await session.execute(text(sql), {"t": tenant_id})
        found.extend(
            Violation(name, int(r.id), str(r.contact_id), int(r.balance), int(r.other))
            for r in rows
        )
    for name, sql in _REFERRAL_CHECKS.items():
        rows = await session.execute(text(sql), {"t": tenant_id})
        unit = "referral" if name == "revoked_referral_rewards" else "reward"
        found.extend(
            Violation(name, int(r.id), str(r.contact_id), int(r.balance), int(r.other), unit)
            for r in rows
        )
    return accounts, found
