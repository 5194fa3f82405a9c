"""``with database:``: the app's Database in sync code with no event loop (scripts, CLI, fixtures).

One configuration for the app and its scripts: the same Database gives a sync engine and
sync sessions outside the lifespan, and opens no async pool.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import anyio.to_thread
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, text

from fastapi_dbpool import Database, DBPoolError, SyncSessionDep
from fastapi_dbpool.errors import DatabaseNotStarted
from users_api.models import User


def test_sync_engine_and_sessions_without_an_event_loop(database_url: str) -> None:
    database = Database(url=database_url)
    with database:
        with database.sync.engine.connect() as connection:
            assert connection.execute(text("SELECT 1")).scalar() == 1
        with database.sync.session() as session:
            session.add(User(name="Script", email="script@example.com"))
        with database.sync.session(read_only=True) as session:
            assert session.scalar(select(User.name)) == "Script"
        assert not database.started  # no async engine, no async pool
        with pytest.raises(DatabaseNotStarted, match="with database:"):
            database.engine  # noqa: B018
        assert database.sync.pool_snapshot().checked_out == 0
        engine = database.sync.engine
    assert database.sync.engine is not engine  # closed with the block; a new one now


def test_engine_held_before_the_block_survives_it(database_url: str) -> None:
    """An app's module-level ``engine = database.sync.engine``, then a script's block."""
    database = Database(url=database_url)
    engine = database.sync.engine
    with database:
        assert database.sync.engine is engine
        with engine.connect() as connection:
            pooled = connection.connection.dbapi_connection
            assert connection.execute(text("SELECT 1")).scalar() == 1
    assert database.sync.engine is engine  # still the one sync engine of the process
    with pytest.raises(Exception, match="closed"):
        pooled.cursor()  # the block's end closed the pooled connections
    with engine.connect() as connection:  # and the engine goes on working
        assert connection.execute(text("SELECT 1")).scalar() == 1
    database.sync.close()


def test_session_rolls_back_when_the_block_raises(database_url: str) -> None:
    with Database(url=database_url) as database:
        with pytest.raises(RuntimeError), database.sync.session() as session:
            session.add(User(name="Lost", email="lost@example.com"))
            session.flush()
            raise RuntimeError("script failed")
        with database.sync.session(read_only=True) as session:
            assert session.scalar(select(func.count()).select_from(User)) == 0


def test_concurrent_writers_in_threads(database_url: str) -> None:
    """Worker threads of a script share the pool; SQLite writers take turns, none fails."""

    def write(n: int) -> None:
        with database.sync.session() as session:
            session.add(User(name=f"T{n}", email=f"t{n}@example.com"))

    with Database(url=database_url) as database, ThreadPoolExecutor(8) as threads:
        list(threads.map(write, range(40)))
        with database.sync.session(read_only=True) as session:
            assert session.scalar(select(func.count()).select_from(User)) == 40


async def test_with_database_refused_inside_the_lifespan(database_url: str) -> None:
    async with Database(url=database_url) as database:
        with pytest.raises(DBPoolError, match="already started"), database:
            pass


async def test_one_sync_engine_before_during_and_after_the_lifespan(database_url: str) -> None:
    """A fixture or script's database.sync.engine is the engine SyncSessionDep uses."""
    database = Database(url=database_url)
    app = FastAPI()
    database.install(app)

    @app.post("/users", status_code=201)
    def add(email: str, session: SyncSessionDep) -> dict[str, str]:
        session.add(User(name="Req", email=email))
        return {"engine": str(id(session.get_bind().engine))}

    def count() -> int:
        with database.sync.session(read_only=True) as session:
            return session.scalar(select(func.count()).select_from(User)) or 0

    before = database.sync.engine
    assert await anyio.to_thread.run_sync(count) == 0  # before the app starts
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            answer = await client.post("/users", params={"email": "r@example.com"})
        assert answer.status_code == 201, answer.text
        assert answer.json()["engine"] == str(id(before))
        assert database.sync.engine is before
        assert await anyio.to_thread.run_sync(count) == 1  # a def task during the app
    assert database.sync.engine is before
    assert await anyio.to_thread.run_sync(count) == 1  # after it stopped
    database.sync.close()


async def test_first_use_of_the_sync_engine_from_a_worker_thread(database_url: str) -> None:
    """A `def` background task may be the first to use database.sync during the app."""
    async with Database(url=database_url) as database:

        def count() -> int:
            with database.sync.session(read_only=True) as session:
                return session.scalar(select(func.count()).select_from(User)) or 0

        assert await anyio.to_thread.run_sync(count) == 0
        assert database.pools_in_use == 2


def test_failed_rollback_does_not_hide_the_callers_error(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The rule of request/session.py: a rollback failing after an error is logged only."""
    with Database(url=database_url) as database:
        with pytest.raises(RuntimeError, match="script failed"), database.sync.session() as session:
            session.add(User(name="Lost", email="lost@example.com"))
            session.flush()
            # The connection breaks under the session: its rollback will fail.
            session.connection().connection.dbapi_connection.close()
            raise RuntimeError("script failed")
        assert any(r.message == "rollback failed after an error" for r in caplog.records)
        with database.sync.session(read_only=True) as session:  # the pool recovered
            assert session.scalar(select(func.count()).select_from(User)) == 0
        assert database.sync.pool_snapshot().checked_out == 0
