"""SyncSessionDep: one connection per request, committed before the response, no deadlock.

Every test runs on both backends, with the endpoints on a router included in a router
(sync sessions need nothing per router).
"""

# No `from __future__ import annotations`: FastAPI must resolve the endpoints'
# annotations, some of which name this module's dependencies.
import asyncio
import threading
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Annotated, Any

import anyio.to_thread
import httpx
import psycopg
import pytest
from fastapi import APIRouter, Depends, FastAPI, HTTPException
from pydantic import BaseModel, field_validator
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from fastapi_dbpool import (
    Database,
    DatabaseSettings,
    DBPoolError,
    SyncReadSessionDep,
    SyncSessionDep,
)
from fastapi_dbpool.testing import assert_pool_idle
from tests.backends import libpq_url
from tests.conftest import make_settings
from tests.polling import eventually
from users_api.models import User


class _Seen:
    """What the response model saw while FastAPI validated it."""

    database: Database | None = None
    checked_out: list[int] = []


class Serialised(BaseModel):
    id: int

    @field_validator("id")
    @classmethod
    def _note_pool(cls, value: int) -> int:
        assert _Seen.database is not None
        _Seen.checked_out.append(_Seen.database.sync.pool_snapshot().checked_out)
        return value


def add_user(email: str, session: SyncSessionDep) -> dict[str, int]:
    user = User(name="Sync", email=email)
    session.add(user)
    session.flush()
    return {"id": user.id}


def add_then_fail(email: str, session: SyncSessionDep) -> None:
    session.add(User(name="Sync", email=email))
    session.flush()
    raise HTTPException(418, "changed my mind")


def add_twice(email: str, session: SyncSessionDep) -> dict[str, str]:
    # No flush: the duplicate is found by the commit, after the endpoint returned.
    session.add_all([User(name="A", email=email), User(name="B", email=email)])
    return {"status": "accepted"}


def serialised(session: SyncSessionDep) -> dict[str, int]:
    return {"id": session.scalar(text("SELECT 1")) or 0}


def count_users(session: SyncReadSessionDep) -> int:
    return session.scalar(select(func.count()).select_from(User)) or 0


def first_user(count: Annotated[int, Depends(count_users)], session: SyncReadSessionDep) -> dict:
    users = session.scalars(select(User).order_by(User.id).limit(1)).all()
    return {"count": count, "first": users[0].email if users else None}


def both_sessions(read: SyncReadSessionDep, write: SyncSessionDep) -> None:
    return None


def hold(seconds: float, session: SyncReadSessionDep) -> dict[str, str]:
    session.execute(text("SELECT 1"))
    time.sleep(seconds)
    return {"status": "done"}


ENDPOINT_STARTED = threading.Event()


ENDPOINT_FINISHED = threading.Event()


def hold_and_add(email: str, seconds: float, session: SyncSessionDep) -> dict[str, str]:
    session.execute(text("SELECT 1"))
    ENDPOINT_STARTED.set()
    time.sleep(seconds)
    session.add(User(name="Late", email=email))
    ENDPOINT_FINISHED.set()
    return {"status": "done"}


def build_app(settings: DatabaseSettings) -> FastAPI:
    app = FastAPI()
    database = Database(settings)
    database.install(app)
    # Included twice over: sync sessions need nothing per router, however deep.
    router = APIRouter()
    router.add_api_route("/users", add_user, methods=["POST"])
    router.add_api_route("/fail", add_then_fail, methods=["POST"])
    router.add_api_route("/twice", add_twice, methods=["POST"])
    router.add_api_route("/serialised", serialised, response_model=Serialised)
    router.add_api_route("/first", first_user)
    router.add_api_route("/both", both_sessions)
    router.add_api_route("/hold", hold)
    router.add_api_route("/hold-and-add", hold_and_add, methods=["POST"])
    outer = APIRouter()
    outer.include_router(router)
    app.include_router(outer)
    _Seen.database = database
    return app


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client
        await assert_pool_idle(app.state.fastapi_dbpool)


def client_for(
    database_url: str, **overrides: Any
) -> AbstractAsyncContextManager[httpx.AsyncClient]:
    settings = make_settings(database_url, **{"pool_size": 5, "max_overflow": 0, **overrides})
    return serve(build_app(settings))


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(database_url) as client:
        yield client


def database_of(client: httpx.AsyncClient) -> Database:
    assert _Seen.database is not None
    return _Seen.database


async def users_in(database: Database) -> list[str]:
    async with database.session(read_only=True) as session:
        return list(await session.scalars(select(User.email).order_by(User.email)))


async def test_endpoint_work_is_committed_before_the_response(client: httpx.AsyncClient) -> None:
    response = await client.post("/users", params={"email": "a@x.com"})
    assert response.status_code == 200, response.text
    # Read through the async pool, on another connection: committed, not just flushed.
    assert await users_in(database_of(client)) == ["a@x.com"]


async def test_endpoint_that_raises_is_rolled_back(client: httpx.AsyncClient) -> None:
    response = await client.post("/fail", params={"email": "a@x.com"})
    assert response.status_code == 418
    assert await users_in(database_of(client)) == []


async def test_failed_commit_is_an_error_response_not_a_2xx(client: httpx.AsyncClient) -> None:
    response = await client.post("/twice", params={"email": "a@x.com"})
    assert response.status_code == 409, response.text
    assert await users_in(database_of(client)) == []
    # The connection is usable again.
    assert (await client.post("/users", params={"email": "b@x.com"})).status_code == 200


async def test_a_request_takes_one_connection_whatever_its_dependencies_do(
    client: httpx.AsyncClient,
) -> None:
    await client.post("/users", params={"email": "a@x.com"})
    sync = database_of(client).sync
    before = sync.pool_snapshot().checkouts_total
    response = await client.get("/first")
    assert response.json() == {"count": 1, "first": "a@x.com"}
    assert sync.pool_snapshot().checkouts_total == before + 1


async def test_two_sync_sessions_in_one_request_are_refused(client: httpx.AsyncClient) -> None:
    with pytest.raises(DBPoolError, match="already holds a sync session"):
        await client.get("/both")


@pytest.mark.timing
async def test_exhaustion_answers_503_within_the_pool_timeout(database_url: str) -> None:
    async with client_for(database_url, pool_size=2, pool_timeout=0.5) as client:
        holders = [asyncio.create_task(client.get("/hold", params={"seconds": 1.5}))]
        holders.append(asyncio.create_task(client.get("/hold", params={"seconds": 1.5})))
        await eventually(
            lambda: database_of(client).sync_monitor.snapshot().checked_out == 2,
            what="both holders checked out",
        )
        started = time.perf_counter()
        response = await client.get("/hold", params={"seconds": 0})
        elapsed = time.perf_counter() - started
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"]
        assert response.json()["reason"] == "pool_exhausted"
        assert 0.4 < elapsed < 1.3, elapsed
        assert [r.status_code for r in await asyncio.gather(*holders)] == [200, 200]
        assert database_of(client).sync.pool_snapshot().timeouts_total == 1


async def test_sync_and_async_writers_share_one_write_gate(database_url: str) -> None:
    """With SQLite's busy_timeout at 0, two writers of the process meeting in SQLite fail."""
    async with client_for(database_url, sqlite_busy_timeout_ms=0) as client:
        database = database_of(client)

        async def write_async(n: int) -> None:
            async with database.session() as session:
                session.add(User(name="Async", email=f"async{n}@x.com"))
                await session.flush()
                await asyncio.sleep(0.005)  # hold the write lock across an await

        sync_writes = [client.post("/users", params={"email": f"sync{n}@x.com"}) for n in range(20)]
        results = await asyncio.gather(*sync_writes, *(write_async(n) for n in range(20)))
        assert [r.status_code for r in results[:20]] == [200] * 20
        assert len(await users_in(database)) == 40


async def test_cancelled_request_returns_its_connection(database_url: str) -> None:
    async with client_for(database_url) as client:
        database = database_of(client)
        ENDPOINT_STARTED.clear()
        ENDPOINT_FINISHED.clear()
        request = asyncio.create_task(
            client.post("/hold-and-add", params={"email": "late@x.com", "seconds": 0.5})
        )
        assert await anyio.to_thread.run_sync(ENDPOINT_STARTED.wait, 5)
        request.cancel()  # as a client disconnect or a request timeout would
        with pytest.raises(asyncio.CancelledError):
            await request
        await assert_pool_idle(database, timeout=3)
        assert await anyio.to_thread.run_sync(ENDPOINT_FINISHED.wait, 5)
        # The endpoint's thread outlived the request: its connection is thrown away
        # rather than returned, so neither it nor its transaction is reused.
        assert await users_in(database) == []
        assert database.sync.pool_snapshot().invalidations_total == 1
        # The pool serves the next request.
        assert (await client.post("/users", params={"email": "next@x.com"})).status_code == 200
        if database.settings.backend == "postgresql":
            assert _idle_in_transaction(database.settings) == 0


def _idle_in_transaction(settings: DatabaseSettings) -> int:
    url = libpq_url(settings.sqlalchemy_url.render_as_string(hide_password=False))
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND state LIKE 'idle in transaction%%'"
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_sync_session_annotation_is_a_session() -> None:
    # The alias is what users annotate with; the type checker sees a plain Session.
    assert SyncSessionDep.__origin__ is Session  # type: ignore[attr-defined]


@pytest.mark.postgres_only
def test_sync_connections_carry_the_no_answer_deadline_to_libpq(database_url: str) -> None:
    """psycopg has no statement deadline of its own: libpq's TCP options carry it."""
    database = Database(DatabaseSettings(url=database_url, no_answer_timeout_s=9))
    with database, database.sync.engine.connect() as conn:
        driver = conn.connection.dbapi_connection
        assert driver is not None
        parameters = driver.info.get_parameters()  # type: ignore[attr-defined]
    assert parameters.get("tcp_user_timeout") == "9000", parameters
    assert parameters.get("keepalives_idle") == "3", parameters
