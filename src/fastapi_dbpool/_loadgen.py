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
import ssl
import time
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
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
        rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
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


class _ConnectionClosed(Exception):
    """The server closed the connection; reconnect."""


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
    started = time.perf_counter()
    deadline = started + duration
    workers = [
        asyncio.create_task(_connection_loop(target, request, context, deadline, result))
        for _ in range(concurrency)
    ]
    reporter = asyncio.create_task(_report(progress, started, result)) if progress else None
    try:
        await asyncio.gather(*workers)
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        if reporter is not None:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
    result.duration_s = time.perf_counter() - started
    if progress is not None:
        progress(result.duration_s, result.responses)
    return result


async def _report(
    progress: Callable[[float, int], None], started: float, result: LoadResult
) -> None:
    while True:
        await asyncio.sleep(PROGRESS_INTERVAL)
        progress(time.perf_counter() - started, result.responses)


async def _connection_loop(
    target: Target,
    request: bytes,
    context: ssl.SSLContext | None,
    deadline: float,
    result: LoadResult,
) -> None:
    writer: asyncio.StreamWriter | None = None
    reader: asyncio.StreamReader | None = None
    try:
        while time.perf_counter() < deadline:
            if writer is None:
                try:
                    async with asyncio.timeout(REQUEST_TIMEOUT):
                        reader, writer = await asyncio.open_connection(
                            target.host, target.port, ssl=context
                        )
                except (OSError, TimeoutError) as error:
                    result.failures[f"connect: {_reason(error)}"] += 1
                    await asyncio.sleep(0.05)  # a refused port must not spin the loop
                    continue
            assert reader is not None
            sent = time.perf_counter()
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    writer.write(request)
                    status, keep_alive = await _read_response(reader)
            except (
                OSError,
                TimeoutError,
                asyncio.IncompleteReadError,
                asyncio.LimitOverrunError,
                _ConnectionClosed,
                ValueError,
            ) as error:
                result.failures[f"read: {_reason(error)}"] += 1
                _close(writer)
                writer = None
                continue
            result.latencies_s.append(time.perf_counter() - sent)
            result.statuses[status] += 1
            if not keep_alive:
                _close(writer)
                writer = None
    finally:
        if writer is not None:
            _close(writer)


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one response; return its status and whether the connection stays open."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        raise _ConnectionClosed("closed by the server") from None
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip().lower()
    keep_alive = headers.get("connection") != "close"
    if status in (204, 304) or 100 <= status < 200:
        return status, keep_alive
    if "chunked" in headers.get("transfer-encoding", ""):
        await _read_chunked(reader)
    elif "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    else:
        await reader.read()  # the body ends when the server closes the connection
        keep_alive = False
    return status, keep_alive


async def _read_chunked(reader: asyncio.StreamReader) -> None:
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass  # trailers
            return
        await reader.readexactly(size + 2)


def _close(writer: asyncio.StreamWriter) -> None:
    # Not awaiting wait_closed(): a dead peer must not stall the load.
    writer.close()


def _reason(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "timeout"
    if isinstance(error, ConnectionRefusedError):
        return "refused"
    if isinstance(error, ConnectionResetError):
        return "reset"
    if isinstance(error, asyncio.IncompleteReadError | _ConnectionClosed):
        return "closed"
    return type(error).__name__
