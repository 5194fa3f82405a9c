"""Pytest fixtures for apps built on fastapi_dbpool (loaded through the ``pytest11`` entry point).

Every fixture is prefixed ``dbpool_`` so that it cannot clash with an app's own; nothing
happens unless a test asks for one. Define ``dbpool_app`` (your app, not started) and,
optionally, ``dbpool_metadata`` (the tables to create) in your ``conftest.py``:

* ``dbpool_url`` (session): a database created for the test session and dropped at its
  end: on the PostgreSQL server of ``dbpool_server`` (``--dbpool-url`` /
  ``DBPOOL_TEST_URL``; a new database ``dbpool_test_<random>`` there), else a SQLite
  file in pytest's temp dir.
* ``dbpool_client``: an ``httpx.AsyncClient`` on ``dbpool_app`` with its lifespan
  running. Every unit of work the app opens runs on one connection per kind (async,
  sync) in a transaction rolled back when the test ends: sessions (``SessionDep``,
  ``ReadSessionDep``, ``SyncSessionDep``, ``SyncReadSessionDep``,
  ``database.session()``) in a savepoint, direct connections (``ConnectionDep``,
  ``ReadConnectionDep``, ``database.connection()``) with their writes in a savepoint,
  so the code under test may commit. After the test, no unit of work may be left open
  and no connection left checked out (the test fails otherwise).
* ``dbpool_database``: the app's :class:`~fastapi_dbpool.Database`, joined as above.

``dbpool_client`` (and ``dbpool_database``, which starts the app through it) needs
pytest-asyncio and httpx, which are not dependencies of the library: install
``fastapi-dbpool[pytest]``. Without them the plugin still loads (it imports them only
when a test asks for those fixtures), and such a test fails with a message saying so.

Limits: async and sync sessions hold one transaction each, so within one test a sync
session does not see what an async one wrote (and on SQLite only one of them may write);
units of work on the test's connection must not run concurrently (one request at a time,
and no background work using the database while the test runs).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, make_url

from ._app import database_of
from .database import Database
from .request.joined import OpenUnits
from .settings import DatabaseSettings
from .sqlite.gate import READ_ONLY_OPTION
from .testing import assert_pool_idle

if TYPE_CHECKING:
    import httpx

__all__ = ["pytest_addoption"]

URL_ENV = "DBPOOL_TEST_URL"

# How long work still running after a test may take to end its units of work.
UNITS_TIMEOUT_S = 5.0

F = TypeVar("F", bound=Callable[..., Any])

_EXTRA = (
    "the {fixture} fixture needs {package}, which fastapi-dbpool does not install: "
    "pip install 'fastapi-dbpool[pytest]' (pytest-asyncio and httpx)"
)


def _asyncio_fixture(func: F) -> F:
    """Make *func* a pytest-asyncio fixture, or, without pytest-asyncio, one that says so.

    pytest-asyncio is imported here rather than at the top of the module: an app that
    installed the library without it must still be able to run its tests (the plugin is
    loaded into every pytest run of an environment where the library is installed).
    """
    try:
        from pytest_asyncio import fixture
    except ImportError:

        def missing() -> NoReturn:
            raise pytest.UsageError(_EXTRA.format(fixture=func.__name__, package="pytest-asyncio"))

        missing.__doc__ = func.__doc__
        return pytest.fixture(name=func.__name__)(missing)  # type: ignore[return-value]
    return fixture(func)  # type: ignore[return-value]


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--dbpool-url``: the PostgreSQL server to create the test database on."""
    parser.addoption(
        "--dbpool-url",
        default=None,
        help=f"PostgreSQL URL whose server hosts the test database (or {URL_ENV}); "
        "default: a SQLite file",
    )


@pytest.fixture(scope="session")
def dbpool_metadata() -> Any:
    """The ``MetaData`` whose tables ``dbpool_url`` creates; override it (default: none)."""
    return None


@pytest.fixture(scope="session")
def dbpool_server(request: pytest.FixtureRequest) -> str | None:
    """The PostgreSQL server that hosts the test database; None: a SQLite file.

    ``--dbpool-url``, else ``DBPOOL_TEST_URL``. Override it to choose otherwise, e.g.
    parametrised over several servers to run the same tests on each.
    """
    server = request.config.getoption("--dbpool-url") or os.environ.get(URL_ENV)
    return str(server) if server else None


@pytest.fixture(scope="session")
def dbpool_url(
    dbpool_server: str | None, tmp_path_factory: pytest.TempPathFactory, dbpool_metadata: Any
) -> Iterator[str]:
    """A database for this test session, with ``dbpool_metadata``'s tables; dropped after."""
    server = dbpool_server
    if not server:
        path = tmp_path_factory.mktemp("dbpool") / "test.db"
        url = f"sqlite:///{path}"
        _create_tables(url, dbpool_metadata)
        yield url
        return
    admin = DatabaseSettings(url=server).sync_url
    name = f"dbpool_test_{uuid.uuid4().hex[:12]}"
    _admin_execute(admin, f'CREATE DATABASE "{name}"')
    try:
        url = make_url(server).set(database=name).render_as_string(hide_password=False)
        _create_tables(url, dbpool_metadata)
        yield url
    finally:
        _admin_execute(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def dbpool_app() -> Any:
    """Your app, not started: override this fixture in your conftest.py."""
    raise pytest.UsageError(
        "the dbpool_client fixture needs a `dbpool_app` fixture returning your FastAPI "
        "app (with Database.install(app) done, on dbpool_url)"
    )


@_asyncio_fixture
async def dbpool_client(dbpool_app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on the started app, each test in a transaction rolled back after it."""
    try:
        import httpx
    except ImportError:
        raise pytest.UsageError(_EXTRA.format(fixture="dbpool_client", package="httpx")) from None
    async with dbpool_app.router.lifespan_context(dbpool_app):
        database = database_of(dbpool_app)
        async with _joined(database):
            transport = httpx.ASGITransport(app=dbpool_app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                yield client
        # Before the lifespan ends: stopping the database would hide a leak.
        await assert_pool_idle(database)


@pytest.fixture
def dbpool_database(dbpool_app: Any, dbpool_client: httpx.AsyncClient) -> Database:
    """The app's Database, started and joined to the test's transactions."""
    return database_of(dbpool_app)


class _joined:
    """Both kinds of session join a transaction rolled back when the block ends."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self._sync: Connection | None = None

    async def __aenter__(self) -> None:
        import anyio.to_thread

        database = self.database
        # Outer transactions as plain BEGIN (the read-only option): on SQLite they must
        # not hold the process's write gate for the whole test.
        options = {READ_ONLY_OPTION: True} if database.settings.backend == "sqlite" else {}
        self._connection = await database.engine.connect()
        await self._connection.execution_options(**options)
        await self._connection.begin()
        database.join(self._connection)

        def open_sync() -> Connection:
            connection = database.sync.engine.connect().execution_options(**options)
            connection.begin()
            return connection

        # In a worker thread: a sync connection may not be used on the loop's thread.
        self._sync = await anyio.to_thread.run_sync(open_sync)
        database.sync.join(self._sync)

    async def __aexit__(self, *exc_info: object) -> None:
        import anyio.to_thread

        database = self.database
        # Nothing is checked out for work on the test's connections, so the pool's check
        # cannot see a unit left open: count them (work still running may end late).
        units = database.joined_units
        left = await _wait_units_ended(units, UNITS_TIMEOUT_S)
        described = units.describe()
        database.join(None)
        database.sync.join(None)
        try:
            await self._connection.rollback()
            await self._connection.close()
        finally:
            sync = self._sync
            if sync is not None:

                def close_sync() -> None:
                    sync.rollback()
                    sync.close()

                await anyio.to_thread.run_sync(close_sync)
        if left:
            raise AssertionError(
                f"{left} unit(s) of work still open on the test's connection ({described}) "
                f"{UNITS_TIMEOUT_S:g} s after the test: a session or connection was not "
                "closed, or work that uses one was still running"
            )


async def _wait_units_ended(units: OpenUnits, timeout: float) -> int:
    import anyio

    deadline = time.monotonic() + timeout
    while True:
        left = units.open
        if left == 0 or time.monotonic() >= deadline:
            return left
        await anyio.sleep(0.01)


def _create_tables(url: str, metadata: Any) -> None:
    if metadata is None:
        return
    engine = create_engine(DatabaseSettings(url=url).sync_url)
    try:
        metadata.create_all(engine)
    finally:
        engine.dispose()


def _admin_execute(admin: Any, sql: str) -> None:
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(text(sql))
    finally:
        engine.dispose()
