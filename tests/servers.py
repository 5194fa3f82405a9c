"""Real servers for tests: a uvicorn process serving an app factory on a free port.

The process gets its settings from the environment, like production, writes its log to
a file the test can read afterwards, and is stopped (SIGTERM, then SIGKILL) when the
block ends. Python warnings are shown every time (``-W always``), so a SQLAlchemy
"non-checked-in connection" warning in the server cannot hide.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.backends import ROOT
from tests.pgcluster import free_port

__all__ = ["UvicornServer", "uvicorn_server"]


class UvicornServer:
    """A running uvicorn process: its base URL and its log."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
        self.process = process
        self.port = port
        self.log_path = log_path

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> int:
        """Stop the server (SIGTERM, then SIGKILL after 15 s); return its exit code.

        The log is complete after this: shutdown warnings included.
        """
        process = self.process
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        return process.returncode

    def log(self) -> str:
        """Everything the server wrote to stdout and stderr so far."""
        return self.log_path.read_text(errors="replace")


@contextmanager
def uvicorn_server(
    factory: str, env: dict[str, str], *, ready_path: str = "/health/live", timeout: float = 30
) -> Iterator[UvicornServer]:
    """Serve the app *factory* (``module:function``) with *env* on top of os.environ.

    Waits until ``GET ready_path`` answers (any status), and stops the process after.
    """
    port = free_port()
    log_dir = Path(tempfile.mkdtemp(prefix="dbpool-uvicorn-"))
    log_path = log_dir / "server.log"
    command = [
        sys.executable, "-W", "always", "-m", "uvicorn", factory, "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
        "--timeout-graceful-shutdown", "5",
    ]  # fmt: skip
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    server = UvicornServer(process, port, log_path)
    try:
        _wait_ready(server, ready_path, timeout)
        yield server
    finally:
        server.stop()
        shutil.rmtree(log_dir, ignore_errors=True)


def _wait_ready(server: UvicornServer, path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"uvicorn exited ({server.process.returncode}):\n{server.log()}")
        try:
            httpx.get(server.base_url + path, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError(f"uvicorn did not answer within {timeout} s:\n{server.log()}")
