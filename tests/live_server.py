"""users_api served by a real uvicorn process on a free port, for tests that need one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.backends import ROOT


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LiveServer:
    """A running uvicorn: its base URL and the file its output goes to."""

    url: str
    log: Path
    process: subprocess.Popen[bytes]

    def output(self) -> str:
        """Everything the server printed so far."""
        return self.log.read_text(errors="replace")


@contextmanager
def live_server(
    database_url: str, tmp_path: Path, *, workers: int = 1, **env: str
) -> Iterator[LiveServer]:
    """Serve ``users_api.main:app`` on *database_url* (already migrated) until the block ends.

    *env* adds environment variables (``DB_POOL_SIZE="3"``, ...). The server is stopped
    with SIGINT, as Ctrl-C would, and killed if it does not exit within 20 s.
    """
    port = free_port()
    log = tmp_path / f"uvicorn-{port}.log"
    environment = dict(os.environ, DATABASE_URL=database_url, **env)
    command = [sys.executable, "-m", "uvicorn", "users_api.main:app"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, env=environment, stdout=out, stderr=subprocess.STDOUT
        )
    server = LiveServer(f"http://127.0.0.1:{port}", log, process)
    try:
        _wait_until_up(server, workers)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def _wait_until_up(server: LiveServer, workers: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise AssertionError(f"uvicorn exited:\n{server.output()[-3000:]}")
            # Every worker logs this once its lifespan has started.
            started = server.output().count("Application startup complete")
            if started >= workers:
                with suppress(httpx.HTTPError):
                    if client.get(server.url + "/health/live").status_code == 200:
                        return
            time.sleep(0.1)
    raise AssertionError(f"uvicorn did not come up in {timeout} s:\n{server.output()[-3000:]}")


@contextmanager
def background_load(
    work: Callable[[httpx.Client], None], *, clients: int
) -> Iterator[Callable[[], int]]:
    """Run *work* in a loop from *clients* threads until the block ends.

    Yields a function that returns how many calls of *work* completed so far. Each
    thread has its own ``httpx.Client``; errors in *work* stop the test at exit.
    """
    stop = threading.Event()
    done = [0] * clients
    errors: list[BaseException] = []

    def run(index: int) -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                try:
                    work(client)
                except BaseException as error:  # reported by the main thread
                    errors.append(error)
                    return
                done[index] += 1

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    try:
        yield lambda: sum(done)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    if errors:
        raise errors[0]
