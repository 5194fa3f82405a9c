"""What the library keeps on the app: its Database, and work run for the app's lifetime."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

from .errors import DatabaseNotStarted

if TYPE_CHECKING:
    from .database import Database

__all__ = ["STATE_KEY", "database_of", "wrap_lifespan"]

# The attribute of ``app.state`` that holds the app's Database.
STATE_KEY = "fastapi_dbpool"


def database_of(app: Any) -> Database:
    """Return the :class:`~fastapi_dbpool.Database` installed on *app*.

    Raises:
        DatabaseNotStarted: no Database was installed (``Database.install(app)``).
    """
    database: Database | None = getattr(app.state, STATE_KEY, None)
    if database is None:
        raise DatabaseNotStarted("no Database installed on this app: call Database.install(app)")
    return database


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
