"""Start and stop the benchmarked apps: one uvicorn worker each, pinned to the app CPU."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.servers import free_port

from .system import APP_CPU, pinned, raise_fd_limit

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class AppSpec:
    """One app under test: its name in the tables, its ASGI path, and its environment."""

    name: str
    target: str
    label: str
    uses_database: bool = True

    def environment(self, url: str, pool_size: int, extra: dict[str, str]) -> dict[str, str]:
        env = {"BENCH_DATABASE_URL": url, "BENCH_POOL_SIZE": str(pool_size)}
        if self.name == "users_api":
            env |= {"DATABASE_URL": url, "DB_POOL_SIZE": str(pool_size), "DB_MAX_OVERFLOW": "0"}
        return env | extra


APPS = {
    spec.name: spec
    for spec in (
        AppSpec("users_api", "users_api.main:app", "users_api (fastapi_dbpool)"),
        AppSpec("raw", "bench.apps.raw_driver:app", "raw driver (asyncpg / aiosqlite)"),
        AppSpec("orm", "bench.apps.orm_async:app", "SQLAlchemy async ORM"),
        AppSpec("orm_dbpool", "bench.apps.orm_dbpool:app", "the ORM app's handlers on SessionDep"),
        AppSpec("tutorial", "bench.apps.tutorial:app", "tutorial (sync session in async def)"),
        AppSpec(
            "tutorial_sync",
            "bench.apps.tutorial_sync:app",
            "tutorial's def endpoints and get_db(), 100 threads",
        ),
        AppSpec("nodb", "bench.apps.nodb:app", "no database", uses_database=False),
    )
}


@dataclass
class AppServer:
    """A running uvicorn for *spec* on a free port; stop it with :meth:`stop`."""

    spec: AppSpec
    url: str
    pool_size: int = 10
    extra_env: dict[str, str] = field(default_factory=dict)
    log_dir: Path = Path("/tmp")
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> AppServer:
        self.port = free_port()
        env = dict(os.environ) | self.spec.environment(self.url, self.pool_size, self.extra_env)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        argv = pinned(
            APP_CPU,
            [
                sys.executable,
                "-m",
                "uvicorn",
                self.spec.target,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
                "--loop",
                "uvloop",
                "--http",
                "httptools",
                "--no-access-log",
                "--log-level",
                "warning",
                "--backlog",
                "4096",
            ],
        )
        log = (self.log_dir / f"{self.spec.name}-{self.port}.log").open("wb")
        self.process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=raise_fd_limit,
        )
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        probe = f"{self.base}/users/1"
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.spec.name} exited with {self.process.returncode}")
            try:
                with urllib.request.urlopen(probe, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.spec.name} did not answer {probe} within {timeout:g} s")

    def rss_mb(self) -> float | None:
        """The server process's resident memory now, in MiB (None once it has exited)."""
        if self.process is None or self.process.poll() is not None:
            return None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return None

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
