"""Loaded into `scrm worker` subprocesses by the kill test (SCRM_EXTRA_TASK_MODULES):
each inbound event takes a little longer to apply, so that a SIGKILL lands while
batches are in flight."""

from __future__ import annotations

import asyncio

from sqlalchemy.ext.asyncio import AsyncSession

from services.users import processing
from services.users.repository import StoredEvent

_apply = processing.apply_inbound


async def _slowly(session: AsyncSession, row: StoredEvent) -> str:
    await asyncio.sleep(0.02)
    return await _apply(session, row)


processing.apply_inbound = _slowly
