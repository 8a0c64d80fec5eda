"""uvicorn's HTTP/1.1 protocols with deadlines for receiving a request.

uvicorn closes idle keep-alive connections, but a client that connects and
sends its request head slowly (or never), or trickles its body, holds a
connection, and the request's task, for as long as it likes. Here:

- the request head (request line and headers) must be complete within
  SCRM_HTTP_HEADER_TIMEOUT_SECONDS of the connection being made, or of the
  first byte of the next request on a kept-alive connection; if not, the
  connection is closed;
- the whole body must be received within SCRM_HTTP_BODY_TIMEOUT_SECONDS of the
  head; if not, the client gets 408 with the error envelope (unless a
  response has started) and the connection is closed. The application sees
  the client as gone.

A connection is closed after a 408 as a careful server closes one whose client
is still sending: the server's side is shut first (the client reads the answer,
then the end), and what the client still sends is read and dropped for up to
LINGER_SECONDS before the socket is closed. Closing a socket with unread data
resets the connection, and a reset can make the client lose the answer that
was written just before it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Protocol

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from shared.config import Settings
from shared.errors import error_body

log = logging.getLogger("scrm.http")

LINGER_SECONDS = 2.0

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - uvicorn's "auto" falls back to h11 the same way
    HttpToolsProtocol = None  # type: ignore[assignment,misc]


class _Cycle(Protocol):
    response_started: bool
    disconnected: bool
    message_event: asyncio.Event


def _timeout_response(seconds: float) -> bytes:
    body = json.dumps(
        error_body(
            "request_timeout",
            f"the request body was not received within {seconds:g} s",
            {"timeout_seconds": seconds},
        )
    ).encode()
    head = (
        b"HTTP/1.1 408 Request Timeout\r\n"
        b"content-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n"
        b"connection: close\r\n\r\n"
    )
    return head + body


class _Deadlines:
    """The two deadlines of one connection; the protocol says when each starts and ends."""

    header_timeout = 10.0
    body_timeout = 30.0
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    client: tuple[str, int] | None

    _head_timer: asyncio.TimerHandle | None = None
    _body_timer: asyncio.TimerHandle | None = None
    _linger_timer: asyncio.TimerHandle | None = None
    _lingering = False

    def _current_cycle(self) -> _Cycle | None:
        raise NotImplementedError

    def _await_head(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_too_slow)

    def _head_received(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _await_body(self) -> None:
        if self._body_timer is None:
            self._body_timer = self.loop.call_later(self.body_timeout, self._body_too_slow)

    def _body_received(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _cancel_deadlines(self) -> None:
        self._head_received()
        self._body_received()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None

    def _close_lingering(self) -> None:
        """Shuts the server's side (the client reads what was written, then the
        end) and drops what the client still sends until it closes its side,
        or for LINGER_SECONDS at most."""
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self._lingering = True
        self.transport.write_eof()
        self.transport.resume_reading()
        self._linger_timer = self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            log.info(
                "request head not received within %gs; connection closed",
                self.header_timeout,
                extra={"client": self.client},
            )
            self.transport.close()

    def _body_too_slow(self) -> None:
        self._body_timer = None
        if self.transport.is_closing() or self._lingering:
            return
        log.info(
            "request body not received within %gs; connection closed",
            self.body_timeout,
            extra={"client": self.client},
        )
        cycle = self._current_cycle()
        if cycle is None or not cycle.response_started:
            self.transport.write(_timeout_response(self.body_timeout))
        if cycle is not None:
            # The application's next receive() says the client is gone, and
            # whatever it still sends is dropped.
            cycle.disconnected = True
            cycle.message_event.set()
        self._close_lingering()


class H11WithDeadlines(_Deadlines, H11Protocol):
    """h11, following the peer's state after each read: IDLE is a head in progress,
    SEND_BODY a body in progress."""

    def _current_cycle(self) -> _Cycle | None:
        return self.cycle

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadlines()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return
        super().data_received(data)
        state = self.conn.their_state
        if state is h11.IDLE:
            self._await_head()
        elif state is h11.SEND_BODY:
            self._head_received()
            self._await_body()
        else:
            self._cancel_deadlines()

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self._cancel_deadlines()
        super().handle_websocket_upgrade(event)


if HttpToolsProtocol is not None:

    class HttpToolsWithDeadlines(_Deadlines, HttpToolsProtocol):
        """httptools, from its parser's callbacks."""

        def _current_cycle(self) -> _Cycle | None:
            return self.cycle

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._await_head()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_deadlines()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._lingering:
                return
            super().data_received(data)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._await_head()

        def on_headers_complete(self) -> None:
            self._head_received()
            super().on_headers_complete()
            self._await_body()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._body_received()

        def handle_websocket_upgrade(self) -> None:
            self._cancel_deadlines()
            super().handle_websocket_upgrade()


def http_protocol(settings: Settings, implementation: str = "auto") -> type[asyncio.Protocol]:
    """The protocol class for uvicorn.Config(http=...): httptools when it is installed
    (as uvicorn's "auto" chooses), else h11, with the settings' deadlines."""
    base: type[Any]
    if implementation == "h11" or (implementation == "auto" and HttpToolsProtocol is None):
        base = H11WithDeadlines
    elif implementation in ("auto", "httptools") and HttpToolsProtocol is not None:
        base = HttpToolsWithDeadlines
    else:
        raise ValueError(f"unknown or unavailable HTTP implementation {implementation!r}")
    protocol: type[asyncio.Protocol] = type(
        base.__name__,
        (base,),
        {
            "header_timeout": settings.http_header_timeout_seconds,
            "body_timeout": settings.http_body_timeout_seconds,
        },
    )
    return protocol
