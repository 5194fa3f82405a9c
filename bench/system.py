"""The machine side of a benchmark: wrk, CPU pinning, and what else is running."""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import shutil
import subprocess
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import psycopg

CPUS = os.cpu_count() or 1
# The app gets one core to itself; wrk and PostgreSQL share the other. On a one-core
# machine nothing is pinned.
APP_CPU: int | None = 0 if CPUS >= 2 else None
LOAD_CPU: int | None = 1 if CPUS >= 2 else None


def ensure_wrk() -> str:
    """Return wrk's path, installing Debian's package with apt-get when it is missing."""
    found = shutil.which("wrk")
    if found:
        return found
    if shutil.which("apt-get") is None:
        raise SystemExit("wrk is not installed and there is no apt-get: install wrk and rerun")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, env=env)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("apt-get install wrk did not provide wrk")
    return found


def pinned(cpu: int | None, argv: list[str]) -> list[str]:
    """*argv* run on *cpu* only (through taskset), or unchanged when not pinning."""
    if cpu is None or shutil.which("taskset") is None:
        return argv
    return ["taskset", "-c", str(cpu), *argv]


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may contain spaces; ppid follows it.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def pin_postgres(admin_dsn: str, cpu: int | None) -> Callable[[], None]:
    """Move the PostgreSQL server at *admin_dsn* (postmaster and its children) to *cpu*.

    New backends inherit the postmaster's affinity. Returns a function that restores the
    affinity the server had. Does nothing (and restores nothing) when the server is not
    a local process this user may change.
    """
    if cpu is None:
        return lambda: None
    try:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            row = conn.execute("SHOW data_directory").fetchone()
        assert row is not None
        postmaster = int((Path(row[0]) / "postmaster.pid").read_text().split()[0])
        original = os.sched_getaffinity(postmaster)
        for pid in [postmaster, *_children(postmaster)]:
            os.sched_setaffinity(pid, {cpu})
    except (OSError, psycopg.Error, AssertionError, ValueError):
        return lambda: None

    def restore() -> None:
        for pid in [postmaster, *_children(postmaster)]:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(pid, original)

    return restore


def describe_machine() -> dict[str, object]:
    """Versions and hardware, recorded with every result."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    packages = [
        "fastapi",
        "starlette",
        "pydantic",
        "sqlalchemy",
        "asyncpg",
        "aiosqlite",
        "psycopg",
        "uvicorn",
        "uvloop",
        "httptools",
    ]
    versions = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "cpu": cpu,
        "cpus": CPUS,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "commit": commit or "unknown",
        "packages": versions,
        "pinning": (
            f"app on CPU {APP_CPU}; wrk and PostgreSQL on CPU {LOAD_CPU}"
            if APP_CPU is not None
            else "none (one CPU)"
        ),
    }


def raise_fd_limit() -> None:
    """Raise this process's open-file soft limit (run in children: wrk, uvicorn).

    1,024 client connections need more descriptors than the usual soft limit of 1,024,
    on both ends: wrk fails to connect and uvicorn fails to accept past it.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
