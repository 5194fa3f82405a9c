"""Throwaway databases for the tests: a SQLite file and a PostgreSQL database per run.

PostgreSQL comes from TEST_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/test).
Each test run creates its own databases with a random name and drops them at the end,
so runs never see each other's rows. Without a reachable server the PostgreSQL tests
skip, unless REQUIRE_POSTGRES=1, which turns the skip into a failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REQUIRE_POSTGRES = os.environ.get("REQUIRE_POSTGRES") == "1"
REQUIRE_SYSTEM_DEPS = os.environ.get("REQUIRE_SYSTEM_DEPS") == "1"


def libpq_url(url: str) -> str:
    """*url* in the libpq spelling psycopg accepts (no +driver)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def postgres_unavailable() -> str | None:
    """The reason PostgreSQL cannot be used, or None when it can."""
    try:
        with psycopg.connect(libpq_url(ADMIN_URL), connect_timeout=3):
            return None
    except psycopg.Error as error:
        return f"PostgreSQL at TEST_POSTGRES_URL is unreachable ({type(error).__name__})"


def skip_or_fail(reason: str, *, required: bool) -> None:
    """Skip with *reason*, or fail when the environment says this may not be skipped."""
    if required:
        pytest.fail(f"{reason}, and the environment requires it", pytrace=False)
    pytest.skip(reason)


def require_postgres() -> None:
    """Skip (or fail under REQUIRE_POSTGRES=1) when PostgreSQL is unreachable."""
    reason = postgres_unavailable()
    if reason is not None:
        skip_or_fail(reason, required=REQUIRE_POSTGRES)


def admin_execute(sql: str) -> None:
    """Run *sql* in autocommit on the admin database."""
    with psycopg.connect(libpq_url(ADMIN_URL), autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


@contextmanager
def postgres_database(prefix: str = "dbpool_test") -> Iterator[str]:
    """Create an empty database; yield its URL; drop it (and its sessions) afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin_execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def alembic(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the project's Alembic command line on the database *url*."""
    env = dict(os.environ, DATABASE_URL=url)
    result = subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result


def migrate(url: str) -> None:
    """``alembic upgrade head`` on *url*, failing loudly."""
    result = alembic(url, "upgrade", "head")
    assert result.returncode == 0, result.stderr[-2000:]


async def settle_sqlite_threads(timeout: float = 5.0) -> None:
    """Let aiosqlite's worker threads finish while the event loop still runs.

    When aiosqlite fails to open a file it stops its worker thread with a close request
    whose answer nobody awaits; the thread posts that answer to the loop later. If the
    test's loop has closed by then, the thread dies with "Event loop is closed" and
    pytest reports it against whichever test runs next. Waiting here keeps the report
    where it belongs, and the loop open until the thread is done.
    """
    import asyncio
    import threading

    for thread in threading.enumerate():
        if "_connection_worker_thread" in thread.name and thread is not threading.current_thread():
            await asyncio.to_thread(thread.join, timeout)
    await asyncio.sleep(0)  # run the callbacks the threads posted
