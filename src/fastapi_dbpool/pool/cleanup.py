"""Run cleanup to completion even when the task that started it is cancelled.

A request task can be cancelled at any await: the client went away, a timeout
fired, the server is shutting down. If that happens inside ``session.rollback()`` or
``session.close()``, the connection would stay checked out until the garbage
collector finds it (SQLAlchemy then warns "non-checked-in connection"), and on
PostgreSQL the server session would sit "idle in transaction". So cleanup runs in its
own task, which a cancellation of the caller does not reach; the caller still sees
its ``CancelledError`` once the cleanup is done or has been handed off.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

__all__ = ["run_to_completion"]

# Strong references: the event loop keeps only weak ones to tasks.
_running: set[asyncio.Task[Any]] = set()


async def run_to_completion(cleanup: Coroutine[Any, Any, None]) -> None:
    """Await *cleanup* in a task of its own, shielded from the caller's cancellation."""
    task = asyncio.ensure_future(cleanup)
    _running.add(task)
    task.add_done_callback(_running.discard)
    await asyncio.shield(task)


async def wait_for_pending_cleanups(timeout: float) -> None:
    """Wait up to *timeout* seconds for cleanups handed off by cancelled tasks."""
    pending = [task for task in _running if not task.done()]
    if pending:
        await asyncio.wait(pending, timeout=timeout)
