"""Helpers for the tests of apps built on fastapi_dbpool."""

from __future__ import annotations

import asyncio
import time

from .database import Database

__all__ = ["assert_pool_idle", "wait_pool_idle"]


async def wait_pool_idle(database: Database, timeout: float = 5.0) -> int:
    """Wait up to *timeout* seconds for every connection to be returned.

    Returns the number still checked out (0 when idle), counting every pool of the
    database (sync, probe and replica pools too). Background tasks and handed-off
    cleanups may return connections a moment after the response.
    """
    deadline = time.monotonic() + timeout
    while True:
        checked_out = _checked_out(database)
        if checked_out == 0 or time.monotonic() >= deadline:
            return checked_out
        await asyncio.sleep(0.01)


async def assert_pool_idle(database: Database, timeout: float = 5.0) -> None:
    """Fail with an AssertionError if connections stay checked out past *timeout*."""
    left = await wait_pool_idle(database, timeout)
    assert left == 0, f"{left} connection(s) still checked out from pool {database.name!r}"


def _checked_out(database: Database) -> int:
    # Every pool: async, sync, health probe and the replica's.
    return sum(monitor.snapshot().checked_out for monitor in database.monitors())
