"""A small app built on fastapi_dbpool, for putting the pool under pressure.

Its handlers hold a session for a chosen time, run a slow query, or expose the pool's
state, so that tests can exhaust the pool, shed load, time statements out and count
what is left checked out. ``users_api_with_pool_stats`` is the reference service plus
a pool-stats route, for the load tests that run it under uvicorn.

Run under uvicorn with settings from the environment::

    uvicorn tests.pressure_app:from_env --factory
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any

import httpx
from fastapi import FastAPI, Query
from sqlalchemy import text
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fastapi_dbpool import (
    Database,
    DatabaseDep,
    DatabaseSettings,
    ReadSessionDep,
    SessionDep,
    health_router,
)
from fastapi_dbpool.testing import assert_pool_idle

# A statement that keeps SQLite busy computing (no lock waits, no sleep function):
# a recursive count to :n.
SQLITE_SLOW_QUERY = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < :n) "
    "SELECT count(*) FROM c"
)


def pool_stats(database: Database, *, collect: bool = False) -> dict[str, Any]:
    """The pool snapshot as a dict; with *collect*, run the garbage collector first.

    Collecting first makes SQLAlchemy report (warn about) any connection that was
    dropped without being checked in.
    """
    if collect:
        gc.collect()
    return asdict(database.pool_snapshot())


class RequestTimeout:
    """Pure ASGI middleware: cancel a request after *seconds*, answer 504 if nothing was sent.

    The usual shape of a request deadline; it cancels the handler wherever it is, which
    is what the cancellation tests need.
    """

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response_started = False

        async def send_tracking(message: Message) -> None:
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            async with asyncio.timeout(self.seconds):
                await self.app(scope, receive, send_tracking)
        except TimeoutError:
            if not response_started:
                timed_out = JSONResponse({"detail": "request timed out"}, status_code=504)
                await timed_out(scope, receive, send)


def create_app(
    settings: DatabaseSettings | None = None,
    *,
    probe_timeout: float = 1.0,
    request_timeout: float | None = None,
) -> FastAPI:
    """Build the pressure app on *settings* (from the environment when omitted).

    With *request_timeout* (seconds), a :class:`RequestTimeout` middleware cancels
    slower requests.
    """
    database = Database(settings)
    app = FastAPI()
    if request_timeout is not None:
        app.add_middleware(RequestTimeout, seconds=request_timeout)
    database.install(app)
    app.include_router(health_router(probe_timeout=probe_timeout))

    @app.get("/hold")
    async def hold(session: ReadSessionDep, seconds: float = Query(0.5, ge=0)) -> dict[str, float]:
        """Take a connection (read-only: no SQLite write gate) and keep it *seconds*."""
        await session.execute(text("SELECT 1"))
        await asyncio.sleep(seconds)
        return {"held": seconds}

    @app.post("/hold-write")
    async def hold_write(
        session: SessionDep, seconds: float = Query(0.5, ge=0)
    ) -> dict[str, float]:
        """Open a write transaction (SQLite: takes the write gate) and keep it *seconds*."""
        await session.execute(text("SELECT 1"))
        await asyncio.sleep(seconds)
        return {"held": seconds}

    @app.get("/slow")
    async def slow(session: SessionDep, seconds: float = Query(1.0, ge=0)) -> dict[str, bool]:
        """Run one statement that takes about *seconds* on the server."""
        if database.settings.backend == "postgresql":
            await session.execute(text("SELECT pg_sleep(:s)"), {"s": seconds})
        else:
            # About 4 million steps a second on a slow core; the deadline stops it sooner.
            await session.execute(text(SQLITE_SLOW_QUERY), {"n": int(seconds * 4_000_000)})
        return {"done": True}

    @app.get("/quick")
    async def quick(session: SessionDep) -> dict[str, int]:
        """One trivial statement: proves the pool serves again."""
        return {"one": int((await session.execute(text("SELECT 1"))).scalar_one())}

    @app.get("/_pool")
    async def stats(
        database: DatabaseDep, collect: bool = Query(False, alias="gc")
    ) -> dict[str, Any]:
        return pool_stats(database, collect=collect)

    return app


@asynccontextmanager
async def started(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Run *app*'s lifespan and yield an in-process client; then check nothing leaked.

    After the client closes, every connection must be back in the pool; after the
    lifespan, a garbage collection surfaces any "non-checked-in connection" warning
    (an error under the test suite's filterwarnings).
    """
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client
        await assert_pool_idle(app.state.fastapi_dbpool)
    gc.collect()


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until *condition()* is true; fail after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def from_env() -> FastAPI:
    """Factory for uvicorn: the pressure app with settings from the environment."""
    return create_app()


def users_api_with_pool_stats() -> FastAPI:
    """Factory for uvicorn: users_api plus ``GET /_pool`` (pool snapshot, ``?gc=true``)."""
    from users_api.main import create_app as create_users_api

    app = create_users_api()
    database: Database = app.state.fastapi_dbpool

    @app.get("/_pool", include_in_schema=False)
    async def stats(collect: bool = Query(False, alias="gc")) -> dict[str, Any]:
        return pool_stats(database, collect=collect)

    return app
