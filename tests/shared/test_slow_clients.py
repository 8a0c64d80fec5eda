"""Slow clients against a real uvicorn server: a request head or body that does not
arrive within its deadline closes the connection; other connections are served."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import socket
import threading
from collections.abc import AsyncIterator, Generator

import pytest
import uvicorn

from shared.app import create_app
from shared.events import SERVICES
from shared.http_server import http_protocol
from shared.process import api_server_config
from shared.runtime import Runtime

DEADLINE = 0.5  # the server's header and body timeouts in these tests
PATIENCE = 15.0  # how long a test waits for what the server must do; never reached


class _Server(uvicorn.Server):
    """Leaves the test runner's signal handlers alone."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


@dataclasses.dataclass
class Address:
    host: str
    port: int
    server: uvicorn.Server

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(self.host, self.port)


@pytest.fixture(params=["httptools", "h11"])
async def server(request: pytest.FixtureRequest, runtime: Runtime) -> AsyncIterator[Address]:
    settings = runtime.settings.model_copy(
        update={"http_header_timeout_seconds": DEADLINE, "http_body_timeout_seconds": DEADLINE}
    )
    app = create_app(SERVICES, dataclasses.replace(runtime, settings=settings))
    config = api_server_config(app, settings)
    config.http = http_protocol(settings, request.param)
    listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listening.bind(("127.0.0.1", 0))
    host, port = listening.getsockname()
    server = _Server(config)
    serving = asyncio.create_task(server.serve(sockets=[listening]))
    async with asyncio.timeout(PATIENCE):
        while not server.started:
            await asyncio.sleep(0.01)
    try:
        yield Address(host, port, server)
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, PATIENCE)
        listening.close()


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection."""
    return await asyncio.wait_for(reader.read(), PATIENCE)


async def healthz(address: Address) -> bytes:
    reader, writer = await address.connect()
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
    await writer.drain()
    answer = await read_until_closed(reader)
    writer.close()
    return answer


async def test_a_connection_that_sends_nothing_is_closed(server: Address) -> None:
    reader, writer = await server.connect()
    assert await read_until_closed(reader) == b""
    writer.close()


async def test_a_partial_request_head_is_closed_and_others_are_served(server: Address) -> None:
    slow = [await server.connect() for _ in range(5)]
    for _, writer in slow:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Slow: ")
        await writer.drain()
    # Served while the slow ones are still open, and after they are closed.
    assert (await healthz(server)).startswith(b"HTTP/1.1 200")
    for reader, writer in slow:
        assert await read_until_closed(reader) == b""
        writer.close()
    assert (await healthz(server)).startswith(b"HTTP/1.1 200")


async def test_the_next_request_on_a_kept_alive_connection_has_a_deadline(
    server: Address,
) -> None:
    reader, writer = await server.connect()
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), PATIENCE)
    assert head.startswith(b"HTTP/1.1 200")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    await asyncio.wait_for(reader.readexactly(length), PATIENCE)
    writer.write(b"GET /healthz HTTP/1.1\r\n")
    await writer.drain()
    assert await read_until_closed(reader) == b""
    writer.close()


async def trickle(writer: asyncio.StreamWriter, stop: asyncio.Event) -> None:
    """One byte of body at a time until told to stop or the server hangs up."""
    with contextlib.suppress(ConnectionError):
        while not stop.is_set():
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(DEADLINE / 5)


@pytest.mark.parametrize(
    "target",
    [
        # A route whose body FastAPI reads before anything else...
        "POST /v1/admin/tenants",
        # ...and the webhooks' front door, which reads it first too.
        "POST /v1/webhooks/some-tenant/events",
    ],
)
async def test_a_body_trickling_in_gets_408_and_is_closed(server: Address, target: str) -> None:
    reader, writer = await server.connect()
    writer.write(
        f"{target} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        "Content-Length: 100000\r\n\r\n".encode()
    )
    await writer.drain()
    stop = asyncio.Event()
    sending = asyncio.create_task(trickle(writer, stop))
    try:
        answer = await read_until_closed(reader)
        assert (await healthz(server)).startswith(b"HTTP/1.1 200")
    finally:
        stop.set()
        await sending
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer
    assert b"connection: close" in head.lower()
    error = json.loads(body)["error"]
    assert error["code"] == "request_timeout"
    assert error["details"] == {"timeout_seconds": DEADLINE}


def _send_and_read_later(
    address: Address, head_sent: threading.Event, send_body: threading.Event, read: threading.Event
) -> bytes:
    """A blocking client that sends a head, then part of the body when told, and reads
    only when told."""
    with socket.create_connection((address.host, address.port), timeout=PATIENCE) as client:
        client.sendall(
            b"POST /v1/admin/tenants HTTP/1.1\r\nHost: test\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n"
        )
        head_sent.set()
        send_body.wait(PATIENCE)
        client.sendall(b" " * 65536)
        read.wait(PATIENCE)
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
        return answer


async def test_the_408_survives_body_bytes_the_server_has_not_read(server: Address) -> None:
    """When the deadline passes, body bytes the server has not read yet are waiting in
    its socket (here it has paused reading, as uvicorn does while the application is
    behind): the server reads and drops them before it closes, so the connection is
    not reset and the 408 is not lost. (Closing a socket with unread data resets the
    connection, and the reset can discard the answer waiting in the client's buffer.)"""
    head_sent, send_body, read = threading.Event(), threading.Event(), threading.Event()
    loop = asyncio.get_running_loop()
    client = loop.run_in_executor(None, _send_and_read_later, server, head_sent, send_body, read)
    try:
        async with asyncio.timeout(PATIENCE):
            while not head_sent.is_set() or not server.server.server_state.connections:
                await asyncio.sleep(0.01)
        (connection,) = server.server.server_state.connections
        connection.transport.pause_reading()
        send_body.set()
        await asyncio.sleep(DEADLINE * 2)
    finally:
        send_body.set()
        read.set()
    answer = await asyncio.wait_for(client, PATIENCE)
    assert answer.startswith(b"HTTP/1.1 408"), answer


async def test_a_body_arriving_in_time_is_served(server: Address) -> None:
    """The body deadline is for the whole body, and a prompt one is answered as usual."""
    reader, writer = await server.connect()
    body = b'{"slug": "x"}'
    writer.write(
        b"POST /v1/admin/tenants HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    await writer.drain()
    writer.write(body)
    await writer.drain()
    answer = await read_until_closed(reader)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 401"), answer  # no API key: answered, not timed out
