"""The Database's lifecycle: created in the lifespan, around the app's own, disposed after."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from fastapi_dbpool import Database, DatabaseSettings, SessionDep
from fastapi_dbpool.errors import DatabaseNotStarted


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

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, str]]:
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
        engine = database.engine
    assert events == ["startup sees 1", "shutdown"]
    assert not database.started
    # Disposed: the pool holds no connections any more.
    assert engine.pool.checkedin() == 0


async def test_stop_closes_every_connection(settings: DatabaseSettings) -> None:
    async with Database(settings) as database:
        async with database.session() as session:
            await session.execute(text("SELECT 1"))
        assert database.pool_snapshot().idle == 1
        engine = database.engine
    assert engine.pool.checkedin() == 0


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
