"""Fixtures shared by every test: backends, migrated databases, the app and its client."""

from __future__ import annotations

import gc
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import create_engine, text

from fastapi_dbpool import Database, DatabaseSettings
from fastapi_dbpool.testing import assert_pool_idle
from tests.backends import migrate, postgres_database, require_postgres

BACKENDS = ["sqlite", "postgres"]


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Give each run a temporary directory of its own, removed when the run ends.

    pytest's default base directory is shared by every run of the user and keeps only
    the three newest: a second run started meanwhile (another checkout, an editor)
    deletes the first run's SQLite files under its feet.
    """
    if config.option.basetemp is None:
        config.option.basetemp = tempfile.mkdtemp(prefix="dbpool-tests-")
        config.add_cleanup(lambda: shutil.rmtree(config.option.basetemp, ignore_errors=True))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Drop the SQLite variant of postgres_only tests, the PostgreSQL one of sqlite_only."""
    dropped = {"sqlite": "postgres_only", "postgres": "sqlite_only"}
    for item in list(items):
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("backend") if callspec is not None else None
        if backend in dropped and item.get_closest_marker(dropped[backend]):
            items.remove(item)


@pytest.fixture(scope="session")
def _sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    path: Path = tmp_path_factory.mktemp("sqlite") / "users_api.db"
    url = f"sqlite+aiosqlite:///{path}"
    migrate(url)
    return url


@pytest.fixture(scope="session")
def _postgres_url() -> Iterator[str]:
    require_postgres()
    with postgres_database() as url:
        migrate(url)
        yield url


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The database backend under test: every database test runs on both."""
    return str(request.param)


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A migrated database of *backend*, emptied after the test."""
    url: str = request.getfixturevalue(f"_{backend}_url")
    yield url
    _empty(url)


def _empty(url: str) -> None:
    sync_url = DatabaseSettings(url=url).sync_url
    engine = create_engine(sync_url)
    try:
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                conn.execute(text("TRUNCATE items, users RESTART IDENTITY CASCADE"))
            else:
                conn.execute(text("DELETE FROM items"))
                conn.execute(text("DELETE FROM users"))
    finally:
        engine.dispose()


@pytest.fixture
def settings(database_url: str) -> DatabaseSettings:
    """Settings for the database under test, small pool so that leaks show."""
    return DatabaseSettings(url=database_url, pool_size=5, max_overflow=0, pool_timeout=5)


def make_settings(database_url: str, **overrides: Any) -> DatabaseSettings:
    """Settings for *database_url* with *overrides*."""
    return DatabaseSettings(url=database_url, **overrides)


async def _lifespan_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client
        database: Database = app.state.fastapi_dbpool
        await assert_pool_idle(database)
    gc.collect()  # surface "non-checked-in connection" warnings in this test


@pytest.fixture
async def app(settings: DatabaseSettings) -> FastAPI:
    """The users_api on the database under test (not started)."""
    from users_api.main import create_app

    return create_app(settings)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client to the started app; asserts every connection came back."""
    async for client in _lifespan_client(app):
        yield client


@pytest.fixture
def database(app: FastAPI) -> Database:
    """The app's Database (started while the client fixture is active)."""
    db: Database = app.state.fastapi_dbpool
    return db
