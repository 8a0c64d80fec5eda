"""The points ledger: every movement of points, and nothing else.

Each operation locks the member's account, appends entries, moves the lots
and stores the new balance, all in the caller's transaction. Points are
integers; the balance never goes below zero (a CHECK backs the code); an
entry, once written, is never changed (a trigger backs that).

    balance = sum(entries.points) = sum(lots.remaining)    debt = sum(entries.debt_delta)
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from services.points import clock
from services.points.exceptions import InsufficientPoints
from services.points.ledger import expiry, repository
from services.points.ledger.repository import LockedAccount


@dataclass(frozen=True)
class Booked:
    """An entry as written (or as found, when its source was booked before)."""

    entry_id: int
    account_id: int
    contact_id: uuid.UUID
    kind: str
    points: int
    balance_after: int
    created_at: datetime
    replayed: bool = False
    settled: list[int] = field(default_factory=list)


def entry_values(
    account: LockedAccount,
    kind: str,
    points: int,
    balance_after: int,
    *,
    debt_delta: int = 0,
    reason: str = "",
    rule: str | None = None,
    source_key: str | None = None,
    order_id: str | None = None,
    expires_at: datetime | None = None,
    details: dict[str, Any] | None = None,
    created_by: str | None = None,
) -> dict[str, Any]:
    return {
        "tenant": account.tenant_id,
        "account": account.id,
        "kind": kind,
        "points": points,
        "debt_delta": debt_delta,
        "balance_after": balance_after,
        "reason": reason,
        "rule": rule,
        "source_key": source_key,
        "order_id": order_id,
        "expires_at": expires_at,
        "details": json.dumps(details or {}, ensure_ascii=False),
        "created_by": created_by,
    }


async def _replay(session: AsyncSession, account: LockedAccount, source_key: str) -> Booked:
    found = await repository.entry_by_source(session, account.tenant_id, source_key)
    assert found is not None
    return Booked(
        found["id"],
        found["account_id"],
        found["contact_id"],
        found["kind"],
        found["points"],
        found["balance_after"],
        found["created_at"],
        replayed=True,
    )


async def earn(
    session: AsyncSession,
    account: LockedAccount,
    points: int,
    *,
    expires_at: datetime,
    source_key: str,
    kind: str = "earn",
    rule: str | None = None,
    reason: str = "",
    order_id: str | None = None,
    earned_at: datetime | None = None,
    details: dict[str, Any] | None = None,
    created_by: str | None = None,
) -> Booked:
    """Credit `points` as a new lot (an earning, or an operator's positive adjustment);
    a debt from earlier clawbacks is settled first."""
    if points <= 0:
        raise ValueError("an earning is a positive number of points")
    balance = earned_balance = account.balance + points
    written = await repository.insert_entry(
        session,
        entry_values(
            account,
            kind,
            points,
            earned_balance,
            reason=reason,
            rule=rule,
            source_key=source_key,
            order_id=order_id,
            expires_at=expires_at,
            details=details,
            created_by=created_by,
        ),
    )
    if written is None:
        return await _replay(session, account, source_key)
    entry_id, created_at = written
    await repository.insert_lot(
        session,
        tenant_id=account.tenant_id,
        account_id=account.id,
        entry_id=entry_id,
        points=points,
        order_id=order_id,
        earned_at=earned_at or created_at,
        expires_at=expires_at,
        kind=kind,
        rule=rule,
    )
    balance, debt, settling = await settle_debt(
        session, account, balance, points, credited_by=entry_id, created_by=created_by
    )
    settled = [] if settling is None else [settling]
    await repository.update_account(
        session, account.id, balance=balance, debt=debt, earned=points if kind == "earn" else 0
    )
    _moved(account, balance, debt)
    return Booked(
        entry_id,
        account.id,
        account.contact_id,
        kind,
        points,
        earned_balance,
        created_at,
        settled=settled,
    )


async def settle_debt(
    session: AsyncSession,
    account: LockedAccount,
    balance: int,
    credited: int,
    *,
    credited_by: int,
    created_by: str | None = None,
) -> tuple[int, int, int | None]:
    """Settle what the account owes from earlier clawbacks out of `credited` points just
    booked (entry `credited_by`, which brought the balance to `balance`): the balance
    and debt after, and the settling entry's id (None when nothing was owed)."""
    if not account.debt:
        return balance, 0, None
    settle = min(account.debt, credited)
    balance -= settle
    written = await repository.insert_entry(
        session,
        entry_values(
            account,
            "clawback",
            -settle,
            balance,
            debt_delta=-settle,
            reason="settles points owed from an earlier clawback",
            source_key=f"settle:{credited_by}",
            details={"settles_for": credited_by},
            created_by=created_by,
        ),
    )
    assert written is not None
    taken = await repository.consume_lots(session, account.id, settle)
    await repository.record_consumption(session, account, written[0], taken)
    return balance, account.debt - settle, written[0]


async def spend(
    session: AsyncSession,
    account: LockedAccount,
    points: int,
    *,
    kind: str = "spend",
    source_key: str,
    reason: str = "",
    details: dict[str, Any] | None = None,
    created_by: str | None = None,
) -> Booked:
    """Debit `points`, oldest lots first, or raise InsufficientPoints and change nothing."""
    if points <= 0:
        raise ValueError("a debit is a positive number of points")
    await _expire_first(session, account)
    if points > account.balance:
        raise InsufficientPoints(points, account.balance)
    balance = account.balance - points
    written = await repository.insert_entry(
        session,
        entry_values(
            account,
            kind,
            -points,
            balance,
            reason=reason,
            source_key=source_key,
            details=details,
            created_by=created_by,
        ),
    )
    if written is None:
        return await _replay(session, account, source_key)
    taken = await repository.consume_lots(session, account.id, points)
    await repository.record_consumption(session, account, written[0], taken)
    await repository.update_account(
        session,
        account.id,
        balance=balance,
        debt=account.debt,
        spent=points if kind == "spend" else 0,
    )
    _moved(account, balance, account.debt)
    return Booked(written[0], account.id, account.contact_id, kind, -points, balance, written[1])


async def clawback(
    session: AsyncSession,
    account: LockedAccount,
    points: int,
    *,
    source_key: str,
    reason: str,
    order_id: str | None = None,
    details: dict[str, Any] | None = None,
    created_by: str | None = None,
) -> Booked:
    """Take back `points`: what the balance holds now, the rest as a debt."""
    if points <= 0:
        raise ValueError("a clawback is a positive number of points")
    await _expire_first(session, account)
    taken_now = min(points, account.balance)
    owed = points - taken_now
    balance = account.balance - taken_now
    debt = account.debt + owed
    written = await repository.insert_entry(
        session,
        entry_values(
            account,
            "clawback",
            -taken_now,
            balance,
            debt_delta=owed,
            reason=reason,
            source_key=source_key,
            order_id=order_id,
            details=details,
            created_by=created_by,
        ),
    )
    if written is None:
        return await _replay(session, account, source_key)
    taken = await repository.consume_lots(session, account.id, taken_now, first_order=order_id)
    await repository.record_consumption(session, account, written[0], taken)
    await repository.update_account(session, account.id, balance=balance, debt=debt)
    _moved(account, balance, debt)
    return Booked(
        written[0], account.id, account.contact_id, "clawback", -taken_now, balance, written[1]
    )


async def _expire_first(session: AsyncSession, account: LockedAccount) -> None:
    """Points past their expiry are gone even if the expiry run has not come yet."""
    expired = await expiry.expire_account(session, account.id)
    if expired:
        _moved(account, account.balance - expired, account.debt)


def _moved(account: LockedAccount, balance: int, debt: int) -> None:
    # The locked snapshot follows its row, so one transaction can book several entries.
    object.__setattr__(account, "balance", balance)
    object.__setattr__(account, "debt", debt)


def now() -> datetime:
    """The points service's clock (services.points.clock)."""
    return clock.now()
