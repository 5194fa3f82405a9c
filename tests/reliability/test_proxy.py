"""The fault proxy itself, against a local echo server: pass, delay, blackhole, stall, reset,
restore.

Fast and without a database: the scenarios trust these modes, so they are proven here.
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from tests.reliability.proxy import FaultProxy

SILENCE_S = 0.3  # how long "no answer" is waited for


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        try:
            while data := sock.recv(4096):
                sock.sendall(data)
        except OSError:
            pass  # cut by the proxy


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    """A fault proxy in front of an echo server on 127.0.0.1."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="echo", daemon=True)
    thread.start()
    try:
        with FaultProxy(server.server_address[:2]) as fault_proxy:  # type: ignore[arg-type]
            yield fault_proxy
    finally:
        server.shutdown()
        server.server_close()


def connect(proxy: FaultProxy) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=5)


def echo(sock: socket.socket, data: bytes = b"ping", timeout: float = 5) -> bytes | None:
    """Send *data*; return what came back, None if nothing came within *timeout*."""
    sock.settimeout(timeout)
    sock.sendall(data)
    received = b""
    try:
        while len(received) < len(data):
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += chunk
    except TimeoutError:
        return received or None
    return received


def is_cut(sock: socket.socket) -> bool:
    """True when the connection was closed or reset by the other end."""
    sock.settimeout(5)
    try:
        sock.sendall(b"x")
        return sock.recv(4096) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


def wait_links(proxy: FaultProxy, count: int) -> None:
    deadline = time.monotonic() + 5
    while proxy.open_links != count:
        assert time.monotonic() < deadline, f"{proxy.open_links} links open, not {count}"
        time.sleep(0.01)


def test_pass_forwards_both_ways(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        assert echo(sock) == b"ping"
        assert echo(sock, b"x" * 100_000) == b"x" * 100_000
        assert proxy.open_links == 1
    wait_links(proxy, 0)


def test_delay_holds_each_answer_then_pass_through_ends_it(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        proxy.delay(200)
        started = time.monotonic()
        assert echo(sock) == b"ping"
        assert time.monotonic() - started >= 0.2
        proxy.pass_through()
        started = time.monotonic()
        assert echo(sock) == b"ping"
        assert time.monotonic() - started < 0.15


def test_blackhole_accepts_and_never_answers_then_restore_cuts_what_it_swallowed(
    proxy: FaultProxy,
) -> None:
    with connect(proxy) as before, connect(proxy) as idle:
        assert echo(before) == b"ping"
        assert echo(idle) == b"ping"
        proxy.blackhole()
        assert echo(before, timeout=SILENCE_S) is None  # swallowed, never closed
        with connect(proxy) as during:  # a new connection is accepted...
            assert echo(during, timeout=SILENCE_S) is None  # ...and hears nothing
            wait_links(proxy, 3)
            proxy.restore()
            # The links that lost bytes are out of step: cut. The idle one passes again.
            assert is_cut(before) and is_cut(during)
        assert echo(idle) == b"ping"
        with connect(proxy) as after:
            assert echo(after) == b"ping"
        wait_links(proxy, 1)


def test_stall_holds_every_byte_then_restore_delivers_them_and_cuts_nothing(
    proxy: FaultProxy,
) -> None:
    with connect(proxy) as before:
        assert echo(before) == b"ping"
        proxy.stall()
        assert echo(before, b"held", timeout=SILENCE_S) is None  # no answer, not closed
        with connect(proxy) as during:  # accepted; reaches the server after the restore
            assert echo(during, b"early", timeout=SILENCE_S) is None
            wait_links(proxy, 2)
            proxy.restore()
            # Nothing was lost and nothing is cut: the held bytes arrive, in order.
            assert receive(before, 4) == b"held"
            assert receive(during, 5) == b"early"
            assert echo(before) == b"ping" and echo(during) == b"ping"
        wait_links(proxy, 1)
    assert proxy.accepted == 2


def receive(sock: socket.socket, size: int) -> bytes:
    """Exactly *size* bytes from *sock*, within 5 s."""
    sock.settimeout(5)
    received = b""
    while len(received) < size:
        chunk = sock.recv(size - len(received))
        assert chunk, f"closed after {received!r}"
        received += chunk
    return received


def test_reset_cuts_every_connection_and_new_ones_pass(proxy: FaultProxy) -> None:
    with connect(proxy) as first, connect(proxy) as second:
        assert echo(first) == b"ping" and echo(second) == b"ping"
        wait_links(proxy, 2)
        proxy.reset()
        assert proxy.open_links == 0
        for sock in (first, second):
            sock.settimeout(5)
            with pytest.raises(ConnectionResetError):  # a reset (RST), not a clean close
                sock.recv(4096)
        with connect(proxy) as third:
            assert echo(third) == b"ping"
    assert proxy.accepted == 3
