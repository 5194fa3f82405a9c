"""The users_api served by a real uvicorn process on a free port, for one test."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

import httpx

from tests.backends import ROOT
from tests.pgbouncer_server import free_port


@contextmanager
def uvicorn_server(database_url: str, **env: str) -> Iterator[str]:
    """Serve ``users_api.main:app`` on *database_url*; yield its base URL; stop it."""
    port = free_port()
    # A file, not a pipe: a pipe nobody reads would block the server once full.
    with tempfile.TemporaryFile() as log:
        yield from _serve(port, database_url, env, log)


def _serve(port: int, database_url: str, env: dict[str, str], log: IO[bytes]) -> Iterator[str]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "users_api.main:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=dict(os.environ, DATABASE_URL=database_url, **env),
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until_live(base, process, log)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_live(base: str, process: subprocess.Popen[bytes], log: IO[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            err = log.read().decode(errors="replace")
            raise RuntimeError(f"uvicorn exited with {process.returncode}: {err[-2000:]}")
        try:
            if httpx.get(f"{base}/health/live", timeout=0.5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("uvicorn did not answer /health/live within 30 s")
