"""Run work for the app's lifetime by wrapping its lifespan, never replacing it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

__all__ = ["wrap_lifespan"]


def wrap_lifespan(app: Any, context: Callable[[], AbstractAsyncContextManager[Any]]) -> None:
    """Enter ``context()`` before the app's current lifespan starts; exit it after it ends.

    Whatever was installed before (the app's own lifespan, :meth:`Database.install`)
    runs inside, so *context* outlives the database: a background sampler started
    here sees the pool from its first to its last connection.
    """
    original = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app_: Any) -> AsyncIterator[Any]:
        async with context(), original(app_) as state:
            yield state

    app.router.lifespan_context = lifespan
