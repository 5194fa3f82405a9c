"""Real server processes for tests, each on a free port of 127.0.0.1.

``uvicorn_server`` runs an app the way a user would: its settings from the
environment, one or more workers, its log in a file the test can read. Python
warnings are shown every time (``-W always``), so a SQLAlchemy "non-checked-in
connection" warning in the server cannot hide, and output is unbuffered, so the log is
complete whenever the test reads it.

Usage::

    with uvicorn_server(USERS_API, {"DATABASE_URL": url}) as server:
        httpx.get(server.url + "/users/1")
        server.stop()                   # graceful shutdown; the log is now complete
        assert "Traceback" not in server.log()
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx

from tests.backends import ROOT

__all__ = ["USERS_API", "UvicornServer", "free_port", "uvicorn_server"]

USERS_API = "users_api.main:app"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class UvicornServer:
    """A running uvicorn process: its port, its base URL and its log."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
        self.process = process
        self.port = port
        self.log_path = log_path

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        """Everything the server wrote to stdout and stderr so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        """Shut the server down as a supervisor would (SIGTERM); return its exit code.

        Killed if it has not exited within 20 s. The log is complete after this,
        shutdown warnings included. Stopping a stopped server does nothing.
        """
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        return self.process.returncode


@contextmanager
def uvicorn_server(
    app: str,
    env: Mapping[str, str],
    *,
    factory: bool = False,
    workers: int = 1,
    access_log: bool = True,
    log_path: Path | None = None,
    timeout: float = 60,
    graceful_timeout: int = 10,
) -> Iterator[UvicornServer]:
    """Serve *app* (``module:attribute``) with *env* on top of os.environ until the block ends.

    Args:
        app: The ASGI app, or with *factory* a function that returns one.
        env: Settings for the app (``DATABASE_URL``, ``DB_POOL_SIZE``, ...).
        factory: Call *app* to build the app (uvicorn's ``--factory``).
        workers: Worker processes; every one has started its lifespan before the block runs.
        access_log: Log every request; turn off under load, or the log grows by a line each.
        log_path: Where the log goes and stays after the block; by default a temporary
            file deleted after the block.
        timeout: Seconds to wait for ``GET /health/live`` to answer 200.
        graceful_timeout: uvicorn's ``--timeout-graceful-shutdown``: after SIGTERM, the
            seconds before it cancels the requests still running. Longer than the app's
            ``SHUTDOWN_GRACE_S`` (5 by default), which answers them 503 first.

    Raises:
        RuntimeError: The server exited or did not answer in time (its log attached).
    """
    port = free_port()
    command = [
        sys.executable, "-W", "always", "-m", "uvicorn", app, *(["--factory"] if factory else []),
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
        # Info level: "Application startup complete" tells when every worker is up.
        "--log-level", "info", *([] if access_log else ["--no-access-log"]),
        "--timeout-graceful-shutdown", str(graceful_timeout),
    ]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="dbpool-uvicorn-") as tmp:
        path = log_path or Path(tmp) / "server.log"
        # A file, not a pipe: a pipe nobody reads would block the server once full.
        with path.open("wb") as log_file:
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        server = UvicornServer(process, port, path)
        try:
            _wait_until_up(server, workers, timeout)
            yield server
        finally:
            server.stop()


def _wait_until_up(server: UvicornServer, workers: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                code = server.process.returncode
                raise RuntimeError(f"uvicorn exited ({code}):\n{server.log()[-3000:]}")
            # Each worker logs this once its lifespan has started; before that, one
            # worker may answer while another still cannot.
            if server.log().count("Application startup complete") >= workers:
                with suppress(httpx.HTTPError):
                    if client.get(server.url + "/health/live").status_code == 200:
                        return
            time.sleep(0.1)
    raise RuntimeError(f"uvicorn did not come up in {timeout:g} s:\n{server.log()[-3000:]}")
