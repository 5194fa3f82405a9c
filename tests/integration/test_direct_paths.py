"""Direct connections: one factory for every path, and misuse answered with what to write."""

# No `from __future__ import annotations`: FastAPI must resolve the endpoints' annotations.
import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from sqlalchemy import bindparam, select, text

from fastapi_dbpool import ConnectionDep, Database
from fastapi_dbpool.errors import DirectConnectionMisuse, WriteInReadSession
from fastapi_dbpool.testing import assert_pool_idle
from tests.conftest import make_settings
from users_api.models import User


async def hold_direct(db: ConnectionDep, request: Request) -> dict[str, Any]:
    await db.all(select(User.id).where(User.id == bindparam("id")), id=0)
    request.app.state.held.set()
    await request.app.state.release.wait()
    return {"status": "done"}


@pytest.fixture
async def app_client(database_url: str) -> AsyncIterator[tuple[Database, httpx.AsyncClient]]:
    app = FastAPI()
    database = Database(make_settings(database_url, pool_size=2, leak_threshold_s=0.05))
    database.install(app)
    app.add_api_route("/hold-direct", hold_direct)
    app.state.held, app.state.release = asyncio.Event(), asyncio.Event()
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield database, client
        await assert_pool_idle(database)


async def test_a_leak_on_connection_dep_names_its_endpoint(
    app_client: tuple[Database, httpx.AsyncClient], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fastapi_dbpool")
    database, client = app_client
    state = client._transport.app.state  # type: ignore[attr-defined]
    request = asyncio.create_task(client.get("/hold-direct"))
    await asyncio.wait_for(state.held.wait(), 10)
    deadline = asyncio.get_running_loop().time() + 10
    while database.pool_snapshot().leaks_total == 0:
        assert asyncio.get_running_loop().time() < deadline, "no leak reported"
        await asyncio.sleep(0.01)
    state.release.set()
    assert (await request).status_code == 200
    [leak] = [r for r in caplog.records if getattr(r, "event", None) == "leak_suspected"]
    # The same factory as Database.connection(), with the request's endpoint noted.
    assert leak.endpoint == "GET /hold-direct"  # type: ignore[attr-defined]


async def test_text_on_a_read_connection_says_to_declare_its_columns(database_url: str) -> None:
    async with (
        Database(make_settings(database_url)) as database,
        database.connection(read_only=True) as db,
    ):
        with pytest.raises(WriteInReadSession, match=r"text\(\.\.\.\)\.columns\(\.\.\.\)"):
            await db.all(text("SELECT 1 AS one"))
        # Declared, it is known to be a select and runs.
        rows = await db.all(text("SELECT 1 AS one").columns(one=User.id.type))
        assert rows == [{"one": 1}]


async def test_text_without_columns_on_a_write_connection_says_what_to_write(
    database_url: str,
) -> None:
    async with Database(make_settings(database_url)) as database:
        async with database.connection() as db:
            with pytest.raises(DirectConnectionMisuse, match=r"text\(\.\.\.\)\.columns"):
                await db.all(text("SELECT 1 AS one"))
        # A statement that returns nothing needs no columns.
        async with database.connection() as db:
            assert await db.all(text("UPDATE users SET name = name WHERE id = 0")) == []
