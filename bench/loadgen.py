"""A deliberately light HTTP/1.1 load generator: pre-built requests over keep-alive sockets.

It shares the machine's cores with the server under test, so it does as
little as possible per request: no HTTP library, no per-request formatting
(every request is prepared before the clock starts), one read loop per
connection. Each connection sends its next request when the previous
response is complete (closed loop).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    requests: int = 0
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    # When each request was sent, in seconds from the start of the run.
    sent_at: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def quantile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000

    def by_second(self) -> list[tuple[int, int, float, float]]:
        """(second, requests, p50 ms, max ms) for each second of the run."""
        seconds: dict[int, list[float]] = {}
        for at, latency in zip(self.sent_at, self.latencies, strict=True):
            seconds.setdefault(int(at), []).append(latency)
        rows = []
        for second, values in sorted(seconds.items()):
            values.sort()
            rows.append((second, len(values), values[len(values) // 2] * 1000, values[-1] * 1000))
        return rows


def build_request(method: str, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: bench", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
            break
    if length:
        await reader.readexactly(length)
    return status


async def run_load(
    host: str,
    port: int,
    requests: list[bytes],
    *,
    connections: int = 32,
    marked: dict[int, float] | None = None,
    rate: float | None = None,
) -> LoadResult:
    """Send every request once, spread over `connections` keep-alive connections. For
    the request indexes that are keys of `marked`, the wall-clock time (time.time())
    each was sent is stored there. With `rate`, request i is not sent before i/rate
    seconds into the run (an open-loop pace, as far as the connections keep up)."""
    result = LoadResult()
    queue = iter(enumerate(requests))
    origin = time.perf_counter()

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for index, request in queue:
                if rate is not None:
                    ahead = origin + index / rate - time.perf_counter()
                    if ahead > 0:
                        await asyncio.sleep(ahead)
                if marked is not None and index in marked:
                    marked[index] = time.time()
                started = time.perf_counter()
                writer.write(request)
                try:
                    status = await _read_response(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    result.errors += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                    continue
                result.latencies.append(time.perf_counter() - started)
                result.sent_at.append(started - origin)
                result.statuses[status] = result.statuses.get(status, 0) + 1
                result.requests += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(connections)))
    result.seconds = time.perf_counter() - started
    return result
