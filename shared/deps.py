"""FastAPI dependencies shared by every service's routes (the web side of shared.db)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db import unit_of_work


async def request_session(request: Request) -> AsyncIterator[AsyncSession]:
    sessionmaker: async_sessionmaker[AsyncSession] = request.app.state.runtime.sessionmaker
    async with unit_of_work(sessionmaker) as session:
        yield session


# scope="function": the commit happens when the endpoint returns and before the
# response is sent, so a failed commit becomes an error response, never a 200
# for a change that was not saved.
SessionDep = Annotated[AsyncSession, Depends(request_session, scope="function")]
get_session = request_session
