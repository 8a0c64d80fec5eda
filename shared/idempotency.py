"""`Idempotency-Key`: a retried mutating request returns the first result.

The key is claimed by inserting a row in the request's own transaction: a
concurrent request with the same key waits on that row's unique index until
the first commits (then replays its answer) or rolls back (then runs itself).
A failed request stores nothing, so retrying it really retries.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from shared.deps import SessionDep
from shared.errors import InvalidInput, ScrmError
from shared.models import IdempotencyRecord

HEADER = "Idempotency-Key"


class ReplayedResponse(ScrmError):
    """Raised to answer with a stored response instead of running the endpoint again."""

    def __init__(self, status_code: int, body: Any) -> None:
        super().__init__("replayed")
        self.status_code = status_code
        self.body = body


class Idempotency:
    """Handle to the claimed key (or none, when the caller sent no key)."""

    def __init__(self, session: AsyncSession, scope: str | None, key: str | None) -> None:
        self.session = session
        self.scope = scope
        self.key = key
        self._pending: tuple[int, Any] | None = None

    def respond(self, body: Any, status_code: int = 200) -> JSONResponse:
        """Build the response and, when a key was sent, store it for replays."""
        encoded = jsonable_encoder(body)
        if self.key is not None:
            self._pending = (status_code, encoded)
        return JSONResponse(encoded, status_code=status_code)

    async def save(self) -> None:
        if self._pending is None or self.key is None:
            return
        status_code, encoded = self._pending
        await self.session.execute(
            update(IdempotencyRecord)
            .where(IdempotencyRecord.scope == self.scope, IdempotencyRecord.key == self.key)
            .values(status_code=status_code, response=encoded)
        )


async def claim(
    session: AsyncSession, scope: str, key: str, request_hash: bytes
) -> IdempotencyRecord | None:
    """Claim `key` in `scope`; returns the earlier record when the key was used before."""
    inserted = await session.scalar(
        insert(IdempotencyRecord)
        .values(scope=scope, key=key, request_hash=request_hash)
        .on_conflict_do_nothing()
        .returning(IdempotencyRecord.key)
    )
    if inserted is not None:
        return None
    return await session.scalar(
        select(IdempotencyRecord).where(
            IdempotencyRecord.scope == scope, IdempotencyRecord.key == key
        )
    )


async def _idempotency(request: Request, session: SessionDep) -> Any:
    key = request.headers.get(HEADER)
    if key is None:
        yield Idempotency(session, None, None)
        return
    key = key.strip()
    if not key or len(key) > 200:
        raise InvalidInput(f"{HEADER} must be 1-200 characters", details={"header": HEADER})
    principal = getattr(request.state, "principal", None)
    scope = str(principal.tenant_id or f"key:{principal.api_key_id}") if principal else "anonymous"
    digest = hashlib.sha256()
    digest.update(f"{request.method} {request.url.path}?{request.url.query}\n".encode())
    digest.update(await request.body())
    request_hash = digest.digest()
    earlier = await claim(session, scope, key, request_hash)
    if earlier is not None:
        if earlier.request_hash != request_hash:
            raise InvalidInput(
                f"this {HEADER} was already used for a different request",
                code="idempotency_key_reused",
            )
        raise ReplayedResponse(earlier.status_code or 200, earlier.response)
    handle = Idempotency(session, scope, key)
    yield handle
    await handle.save()


IdempotencyDep = Annotated[Idempotency, Depends(_idempotency, scope="function")]
