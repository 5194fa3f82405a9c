"""A small HTTP/1.1 load generator for ``dbpool bench``: keep-alive connections, asyncio.

Each of *concurrency* connections sends one request, reads the whole response, and
sends the next, until the duration ends (a closed loop, like wrk). The request bytes
are built once; responses are parsed just enough to find their end (Content-Length,
chunked, or connection close). Latency is measured from the first byte written to the
last byte read. Needs nothing beyond the standard library; uvloop is used when present.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import ssl
import time
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast
from urllib.parse import urlsplit

__all__ = ["LoadResult", "Target", "run_load"]

# Seconds a request may take before it counts as a timeout and its connection is dropped.
REQUEST_TIMEOUT = 10.0
# Seconds between two calls of the progress callback.
PROGRESS_INTERVAL = 0.1


class TargetError(ValueError):
    """The URL or request options cannot be used."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where and what to send."""

    scheme: str
    host: str
    port: int
    path: str
    method: str = "GET"
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        path: str | None = None,
        method: str = "GET",
        body: bytes = b"",
        headers: tuple[tuple[str, str], ...] = (),
    ) -> Target:
        """Parse *url*; *path* (with its query) replaces the URL's own when given.

        Raises:
            TargetError: not an http:// or https:// URL with a host.
        """
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise TargetError(f"{url!r} is not an http:// or https:// URL with a host")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise TargetError(f"{url!r} has an invalid port") from None
        if path is None:
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if not path.startswith("/"):
            path = "/" + path
        return cls(parts.scheme, parts.hostname, port, path, method.upper(), body, headers)

    @property
    def url(self) -> str:
        """The full URL, for display."""
        return f"{self.scheme}://{self.host}:{self.port}{self.path}"

    def request_bytes(self) -> bytes:
        """The raw HTTP/1.1 request, sent unchanged on every iteration."""
        host = self.host if ":" not in self.host else f"[{self.host}]"
        lines = [
            f"{self.method} {self.path} HTTP/1.1",
            f"Host: {host}:{self.port}",
            "User-Agent: dbpool-bench",
            "Accept: */*",
        ]
        names = {name.lower() for name, _ in self.headers}
        if self.body or self.method in ("POST", "PUT", "PATCH"):
            if "content-type" not in names:
                lines.append("Content-Type: application/json")
            lines.append(f"Content-Length: {len(self.body)}")
        lines += [f"{name}: {value}" for name, value in self.headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


@dataclass(slots=True)
class LoadResult:
    """What the load produced. Latencies are in seconds, one per answered request."""

    target: Target
    concurrency: int
    duration_s: float = 0.0
    latencies_s: array[float] = field(default_factory=lambda: array("d"))
    statuses: Counter[int] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)

    @property
    def responses(self) -> int:
        """Requests answered with a status, whatever it was."""
        return sum(self.statuses.values())

    @property
    def requests(self) -> int:
        """Requests sent: answered plus failed (connection errors, timeouts)."""
        return self.responses + sum(self.failures.values())

    @property
    def errors(self) -> int:
        """Answers that are not 2xx or 3xx, plus failures."""
        bad = sum(n for status, n in self.statuses.items() if not 200 <= status < 400)
        return bad + sum(self.failures.values())

    @property
    def requests_per_second(self) -> float:
        """Answered requests per second of load."""
        return self.responses / self.duration_s if self.duration_s else 0.0

    def percentile(self, fraction: float) -> float | None:
        """Latency below which *fraction* of the answers came (nearest rank); None if none."""
        if not self.latencies_s:
            return None
        ordered = sorted(self.latencies_s)
        # round() first: 0.29 * 100 is 28.999999999999996 in floating point.
        rank = max(0, min(len(ordered) - 1, math.ceil(round(fraction * len(ordered), 9)) - 1))
        return ordered[rank]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary; latencies in milliseconds."""

        def ms(value: float | None) -> float | None:
            return None if value is None else round(value * 1000, 3)

        return {
            "url": self.target.url,
            "method": self.target.method,
            "concurrency": self.concurrency,
            "duration_s": round(self.duration_s, 3),
            "requests": self.requests,
            "responses": self.responses,
            "requests_per_second": round(self.requests_per_second, 1),
            "latency_ms": {
                "p50": ms(self.percentile(0.50)),
                "p90": ms(self.percentile(0.90)),
                "p99": ms(self.percentile(0.99)),
                "max": ms(max(self.latencies_s, default=None)),
            },
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "failures": dict(sorted(self.failures.items())),
            "errors": self.errors,
            "engine": "python",
        }


async def run_load(
    target: Target,
    *,
    concurrency: int,
    duration: float,
    progress: Callable[[float, int], None] | None = None,
) -> LoadResult:
    """Send requests to *target* over *concurrency* connections for *duration* seconds.

    Args:
        target: Where and what to send.
        concurrency: Connections, each with one request in flight.
        duration: Seconds of load; requests in flight at the end are awaited (each
            bounded by REQUEST_TIMEOUT).
        progress: Called about every 0.1 s with (elapsed seconds, responses so far).
    """
    result = LoadResult(target, concurrency)
    request = target.request_bytes()
    context = ssl.create_default_context() if target.scheme == "https" else None
    # perf_counter, not loop.time(): uvloop's clock ticks in whole milliseconds.
    started = time.perf_counter()
    deadline = started + duration
    slots = [
        asyncio.create_task(_slot(target, request, context, deadline, result))
        for _ in range(concurrency)
    ]
    reporter = asyncio.create_task(_report(progress, started, result))
    try:
        await asyncio.gather(*slots)
    finally:
        for task in slots:
            task.cancel()
        await asyncio.gather(*slots, return_exceptions=True)
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporter
    result.duration_s = time.perf_counter() - started
    if progress is not None:
        progress(result.duration_s, result.responses)
    return result


async def _report(
    progress: Callable[[float, int], None] | None, started: float, result: LoadResult
) -> None:
    while True:
        await asyncio.sleep(PROGRESS_INTERVAL)
        now = time.perf_counter()
        if progress is not None:
            progress(now - started, result.responses)
        # One watchdog for every connection rather than a timer per request.
        for client in _Client.active:
            if client.sent_at and now - client.sent_at > REQUEST_TIMEOUT:
                client.fail("timeout")


async def _slot(
    target: Target,
    request: bytes,
    context: ssl.SSLContext | None,
    deadline: float,
    result: LoadResult,
) -> None:
    """Keep one connection busy until *deadline*, reconnecting when it closes."""
    loop = asyncio.get_running_loop()
    while time.perf_counter() < deadline:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                _, client = await loop.create_connection(
                    lambda: _Client(request, deadline, result),
                    target.host,
                    target.port,
                    ssl=context,
                )
        except (OSError, TimeoutError) as error:
            result.failures[f"connect: {_reason(error)}"] += 1
            await asyncio.sleep(0.05)  # a refused port must not spin the loop
            continue
        try:
            await client.closed
        finally:
            client.close()


class _Client(asyncio.Protocol):
    """One keep-alive connection that sends the next request as soon as a response ends.

    Everything happens in ``data_received``: no task or future per request, which keeps
    the generator's own cost well below the app's.
    """

    active: ClassVar[set[_Client]] = set()

    def __init__(self, request: bytes, deadline: float, result: LoadResult) -> None:
        self.request = request
        self.deadline = deadline
        self.result = result
        self.loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.sent_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        _Client.active.add(self)
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        self.sent_at = time.perf_counter()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        try:
            parsed = _parse_response(self.buffer, eof=False)
        except ValueError:
            self.fail("bad response")
            return
        if parsed is None:
            return  # incomplete
        status, length, keep_alive = parsed
        del self.buffer[:length]
        self._done(status)
        if keep_alive and not self.buffer and time.perf_counter() < self.deadline:
            self._send()
        else:
            self.close()

    def _done(self, status: int) -> None:
        self.result.latencies_s.append(time.perf_counter() - self.sent_at)
        self.result.statuses[status] += 1
        self.sent_at = 0.0

    def fail(self, reason: str) -> None:
        """Count the request in flight as failed and drop the connection."""
        if self.sent_at:
            self.result.failures[f"read: {reason}"] += 1
            self.sent_at = 0.0
        self.close()

    def close(self) -> None:
        """Close the connection; the slot reconnects if the load still runs."""
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.sent_at:
            # A response delimited by the connection's end is complete only now.
            parsed = _parse_response(self.buffer, eof=True) if self.buffer else None
            if parsed is not None:
                self._done(parsed[0])
            else:
                self.fail("reset" if isinstance(exc, ConnectionResetError) else "closed")
        _Client.active.discard(self)
        if not self.closed.done():
            self.closed.set_result(None)


def _parse_response(buffer: bytearray, *, eof: bool) -> tuple[int, int, bool] | None:
    """(status, bytes used, keep-alive) of the response at the start of *buffer*.

    None while it is incomplete. Raises ValueError when it is not HTTP/1.x.
    """
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buffer[:end]).lower()
    if not head.startswith(b"http/1."):
        raise ValueError("not an HTTP/1.x response")
    status = int(head[9:12])
    body_start = end + 4
    keep_alive = b"\r\nconnection: close" not in head
    if status in (204, 304) or 100 <= status < 200:
        return status, body_start, keep_alive
    if b"\r\ntransfer-encoding: chunked" in head:
        body_end = _chunked_end(buffer, body_start)
        return None if body_end is None else (status, body_end, keep_alive)
    marker = head.find(b"\r\ncontent-length:")
    if marker >= 0:
        line_end = head.find(b"\r\n", marker + 2)
        value = head[marker + 17 : line_end if line_end >= 0 else len(head)]
        body_end = body_start + int(value)
        return None if len(buffer) < body_end else (status, body_end, keep_alive)
    # No length: the body ends with the connection.
    return (status, len(buffer), False) if eof else None


def _chunked_end(buffer: bytearray, position: int) -> int | None:
    while True:
        line_end = buffer.find(b"\r\n", position)
        if line_end < 0:
            return None
        size = int(bytes(buffer[position:line_end]).split(b";")[0], 16)
        position = line_end + 2
        if size == 0:
            trailers_end = buffer.find(b"\r\n\r\n", position - 2)
            return None if trailers_end < 0 else trailers_end + 4
        position += size + 2
        if position > len(buffer):
            return None


def _reason(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "timeout"
    if isinstance(error, ConnectionRefusedError):
        return "refused"
    return type(error).__name__
