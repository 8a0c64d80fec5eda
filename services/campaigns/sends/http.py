"""One long-lived HTTP client per process and event loop for the channels' providers.

Creating an httpx client builds a TLS context (the system's CA bundle loaded anew,
about 10 ms of CPU), and a fresh client opens new connections: per send, that was
most of what a welcome message cost. Sends share this one instead; the callers'
provider clients are given it and leave it open.
"""

from __future__ import annotations

import asyncio

import httpx

TIMEOUT = httpx.Timeout(10.0, connect=5.0)
_clients: dict[int, httpx.AsyncClient] = {}


def shared_client() -> httpx.AsyncClient:
    """The running loop's client (created on first use)."""
    loop = id(asyncio.get_running_loop())
    client = _clients.get(loop)
    if client is None or client.is_closed:
        client = _clients[loop] = httpx.AsyncClient(
            timeout=TIMEOUT, limits=httpx.Limits(max_connections=100)
        )
    return client
