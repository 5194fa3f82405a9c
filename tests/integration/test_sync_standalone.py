"""``with database:``: the app's Database in sync code with no event loop (scripts, CLI, fixtures).

One configuration for the app and its scripts: the same Database gives a sync engine and
sync sessions outside the lifespan, and opens no async pool.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select, text

from fastapi_dbpool import Database, DBPoolError
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
    with pytest.raises(DatabaseNotStarted):
        database.sync  # noqa: B018 - closed with the block


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
