"""The Database's lifecycle: created in the lifespan, around the app's own, disposed after.

"Disposed" is checked on the connections themselves, not on the engine's pool object:
``AsyncEngine.dispose()`` swaps in a fresh, empty pool, whose counts are zero whether or
not the old one closed anything. Each test notes every driver connection the pool
opens and closes (SQLAlchemy's ``connect`` and ``close`` pool events) and, on
PostgreSQL, asks the server which of the app's sessions are still there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine

from fastapi_dbpool import Database, DatabaseSettings, SessionDep
from fastapi_dbpool.errors import DatabaseNotStarted
from tests.pgstat import app_sessions
from tests.polling import eventually


class ConnectionLog:
    """Every driver connection *engine*'s pool opens, and which of them it closed."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.opened: list[Any] = []
        self.closed: list[Any] = []
        # Engine-level pool listeners also apply to the pool dispose() swaps in.
        event.listen(engine.sync_engine, "connect", lambda dbapi, _: self.opened.append(dbapi))
        event.listen(engine.sync_engine, "close", lambda dbapi, _: self.closed.append(dbapi))

    @property
    def still_open(self) -> list[Any]:
        """Connections opened and not (yet) closed by the pool."""
        return [c for c in self.opened if not any(c is d for d in self.closed)]


async def assert_server_sessions_gone(settings: DatabaseSettings) -> None:
    """On PostgreSQL, wait until the server has no session of the app's pool left."""
    if settings.backend != "postgresql":
        return
    url = settings.sqlalchemy_url.render_as_string(hide_password=False)
    # A backend ends a moment after its client closed the socket.
    await eventually(lambda: app_sessions(url) == [], timeout=10, what="app sessions ended")


async def test_nothing_is_created_before_the_lifespan(settings: DatabaseSettings) -> None:
    database = Database(settings)
    assert not database.started
    with pytest.raises(DatabaseNotStarted, match="lifespan"):
        database.engine  # noqa: B018
    with pytest.raises(DatabaseNotStarted):
        async with database.session():
            pass


async def test_wraps_the_apps_own_lifespan(settings: DatabaseSettings) -> None:
    events: list[str] = []
    database = Database(settings)

    log: list[ConnectionLog] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, str]]:
        log.append(ConnectionLog(database.engine))
        # The app's own start-up can already use the database.
        async with database.session() as session:
            events.append(f"startup sees {await session.scalar(text('SELECT 1'))}")
        yield {"greeting": "hello"}
        assert database.started
        events.append("shutdown")

    app = FastAPI(lifespan=lifespan)
    database.install(app)

    @app.get("/")
    async def index(session: SessionDep) -> int:
        return int(await session.scalar(text("SELECT 2")) or 0)

    async with app.router.lifespan_context(app) as state:
        assert state == {"greeting": "hello"}
        assert database.started
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            assert (await client.get("/")).json() == 2
        [connections] = log
        assert len(connections.opened) == 1 and connections.still_open == connections.opened
    assert events == ["startup sees 1", "shutdown"]
    assert not database.started
    # Disposed: the connection the app used is closed, on the server too.
    assert connections.still_open == []
    await assert_server_sessions_gone(settings)


async def test_stop_closes_every_connection(settings: DatabaseSettings) -> None:
    async with Database(settings) as database:
        connections = ConnectionLog(database.engine)

        # Three at once (read-only: SQLite lets one writer in at a time), so that the
        # pool holds three idle connections at the end.
        read = database.session
        async with read(read_only=True) as a, read(read_only=True) as b, read(read_only=True) as c:
            for session in (a, b, c):
                await session.execute(text("SELECT 1"))
        assert database.pool_snapshot().idle == 3
        assert len(connections.still_open) == 3
        if settings.backend == "postgresql":
            url = settings.sqlalchemy_url.render_as_string(hide_password=False)
            assert app_sessions(url) == ["idle"] * 3
    assert connections.still_open == []
    await assert_server_sessions_gone(settings)


async def test_pool_snapshot_counts(settings: DatabaseSettings) -> None:
    async with Database(settings) as database:
        first = database.pool_snapshot()
        assert (first.size, first.checked_out, first.waiting, first.checkouts_total) == (5, 0, 0, 0)
        async with database.session() as session:
            await session.execute(text("SELECT 1"))
            during = database.pool_snapshot()
            assert during.checked_out == 1 and during.checkouts_total == 1
        after = database.pool_snapshot()
        assert after.checked_out == 0 and after.connects_total == 1 and after.idle == 1
        assert not after.saturated and after.capacity == 5
