"""A TCP proxy between the app and its database that can fail on command.

The pattern of psycopg's and asyncpg's own test suites: the app connects to the proxy,
the proxy to the server, and the test decides what the network does::

    with FaultProxy(("127.0.0.1", cluster.port)) as proxy:
        url = proxy.url_for(database_url)  # the same database, through the proxy
        proxy.delay(500)                    # every answer from the server waits 500 ms
        proxy.blackhole()                   # accept, read, never answer, never close
        proxy.stall()                       # forward nothing, lose nothing, close nothing
        proxy.reset()                       # cut every connection now (RST)
        proxy.restore()                     # pass again; black-holed links are cut

``blackhole()`` drops what it reads, so a link that lost bytes is out of step and
``restore()`` cuts it: part of the recovery is then the proxy's. ``stall()`` is a
partition that heals: bytes wait (in the proxy and the kernels' buffers) and are
delivered by ``restore()``, which cuts nothing; what recovers is the app alone.

The proxy runs its own event loop in a thread, so it keeps forwarding while the test's
loop is busy, and a subprocess (uvicorn) can use it. Every method is thread-safe and
returns once the new mode is in force.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import make_url

__all__ = ["FaultProxy"]

CHUNK = 65536


@dataclass(eq=False)  # hashed by identity: links live in a set
class _Link:
    """One client connection and its upstream twin."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # Bytes were dropped on this link while black-holed: the protocol is out of step.
    corrupted: bool = False


class FaultProxy:
    """Forward TCP from a free port of 127.0.0.1 to *target*, with injectable faults.

    Args:
        target: ``(host, port)`` of the server.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self.mode = "pass"
        self.delay_s = 0.0
        self.accepted = 0
        self._links: set[_Link] = set()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy")
        # Set whenever the proxy leaves blackhole mode, so that stalled pumps resume.
        self._flowing: asyncio.Event | None = None

    # -- control (any thread) ------------------------------------------------------------

    def url_for(self, database_url: str) -> str:
        """*database_url*'s database and user, reached through this proxy."""
        return (
            make_url(database_url)
            .set(host="127.0.0.1", port=self.port)
            .render_as_string(hide_password=False)
        )

    def pass_through(self) -> None:
        """Forward everything as it comes."""
        self._call(self._set_mode, "pass", 0.0)

    def delay(self, ms: float) -> None:
        """Hold every chunk from the server *ms* milliseconds: each round trip is *ms* longer."""
        self._call(self._set_mode, "pass", ms / 1000)

    def blackhole(self) -> None:
        """Accept connections and read from them, but forward and answer nothing."""
        self._call(self._set_mode, "blackhole", 0.0)

    def stall(self) -> None:
        """Forward nothing and close nothing; hold every byte until :meth:`restore`.

        New connections are accepted, and reach the server only after the restore.
        """
        self._call(self._set_mode, "stall", 0.0)

    def reset(self) -> None:
        """Cut every open connection with a TCP reset; new ones pass as before."""
        self._call(self._reset_all, lambda link: True)

    def restore(self) -> None:
        """Forward again without delay; connections that lost bytes are cut.

        After :meth:`stall` no byte was lost: the held ones are delivered, nothing is cut.
        """
        self._call(self._set_mode, "pass", 0.0)
        self._call(self._reset_all, lambda link: link.corrupted)

    @property
    def open_links(self) -> int:
        """Client connections open through the proxy now."""
        return self._call(lambda: len(self._links))

    def start(self) -> None:
        """Listen on a free port of 127.0.0.1 (``self.port``)."""
        self._thread.start()
        self._call_async(self._start())

    def stop(self) -> None:
        """Cut every connection, stop listening and end the thread."""
        if not self._thread.is_alive():
            return
        try:
            self._call_async(self._stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _call(self, func: Callable[..., Any], *args: Any) -> Any:
        future: Future[Any] = Future()

        def run() -> None:
            try:
                future.set_result(func(*args))
            except BaseException as error:
                future.set_exception(error)

        self._loop.call_soon_threadsafe(run)
        return future.result(timeout=10)

    def _call_async(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    # -- the proxy's own loop -----------------------------------------------------------

    async def _start(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self._reset_all(lambda link: True)
        tasks = [task for link in list(self._links) for task in link.tasks]
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    def _set_mode(self, mode: str, delay_s: float) -> None:
        assert self._flowing is not None
        self.mode, self.delay_s = mode, delay_s
        if mode in ("blackhole", "stall"):
            self._flowing.clear()
        else:
            self._flowing.set()

    def _reset_all(self, which: Callable[[_Link], bool]) -> None:
        for link in [link for link in self._links if which(link)]:
            self._close(link)

    def _close(self, link: _Link) -> None:
        self._links.discard(link)
        for writer in (link.client, link.upstream):
            if writer is None:
                continue
            sock = writer.get_extra_info("socket")
            if sock is not None and not writer.transport.is_closing():
                # SO_LINGER 0: close() sends RST, as a crashed host or a firewall does.
                with suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        for task in link.tasks:
            if task is not asyncio.current_task():
                task.cancel()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        link = _Link(client=writer)
        self._links.add(link)
        assert self._flowing is not None
        try:
            # A black-holed connect is accepted and then never hears from the server.
            while not self._flowing.is_set():
                if self.mode == "stall":
                    await self._flowing.wait()  # its bytes wait in the kernel's buffer
                    continue
                link.corrupted = True
                if not await reader.read(CHUNK):
                    raise ConnectionError("client closed")
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except (OSError, ConnectionError, asyncio.CancelledError):
            self._close(link)
            return
        if link not in self._links:  # reset while connecting
            up_writer.transport.abort()
            return
        link.upstream = up_writer
        link.tasks = [
            asyncio.create_task(self._pump(link, reader, up_writer, delayed=False)),
            asyncio.create_task(self._pump(link, up_reader, writer, delayed=True)),
        ]

    async def _pump(
        self,
        link: _Link,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        *,
        delayed: bool,
    ) -> None:
        assert self._flowing is not None
        try:
            while True:
                data = await source.read(CHUNK)
                if not data:
                    break
                if self.mode == "blackhole":
                    link.corrupted = True  # dropped: the peer never sees these bytes
                    continue
                if delayed and self.delay_s:
                    await asyncio.sleep(self.delay_s)
                while self.mode == "stall":  # held, not lost: delivered by restore()
                    await self._flowing.wait()
                if self.mode == "blackhole":
                    link.corrupted = True
                    continue
                sink.write(data)
                await sink.drain()
        except (OSError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            if link in self._links:
                self._close(link)
