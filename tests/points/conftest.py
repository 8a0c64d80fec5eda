"""Fixtures of the points tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.points.support import AlertReceiver


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[AlertReceiver, str]]:
    """A local alert webhook: the receiver and its URL."""
    hook = AlertReceiver()
    server = await asyncio.start_server(hook.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield hook, f"http://127.0.0.1:{port}/alerts"
