"""The pytest plugin, used as an app's test suite uses it: run by pytester in a subprocess.

An app with async and ``def`` endpoints, on sessions and direct connections; its tests
commit, and the next test sees none of it (the per-test transaction was rolled back); a
test that leaks a connection, or leaves a session or direct connection open on the
test's connection (where nothing is checked out), fails.
On SQLite (no URL) and on PostgreSQL (``DBPOOL_TEST_URL``: a database created and dropped).
"""

from __future__ import annotations

import pytest

from tests.backends import ADMIN_URL, require_postgres

pytest_plugins = ["pytester"]

CONFTEST = """
import pytest
from fastapi import FastAPI, HTTPException
from sqlalchemy import bindparam, insert, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from fastapi_dbpool import (
    ConnectionDep,
    Database,
    ReadConnectionDep,
    SessionDep,
    SyncSessionDep,
)


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str]


@pytest.fixture(scope="session")
def dbpool_metadata():
    return Base.metadata


@pytest.fixture
def dbpool_app(dbpool_url):
    app = FastAPI()
    Database(url=dbpool_url).install(app)

    @app.post("/notes", status_code=201)
    async def add(text: str, session: SessionDep) -> dict:
        session.add(Note(text=text))
        await session.commit()  # code under test may commit: a savepoint is released
        return {"ok": True}

    @app.get("/notes")
    async def notes(session: SessionDep) -> list[str]:
        return list(await session.scalars(select(Note.text)))

    @app.post("/sync/notes", status_code=201)
    def add_sync(text: str, session: SyncSessionDep) -> dict:
        session.add(Note(text=text))
        session.commit()
        return {"ok": True}

    @app.get("/sync/notes")
    def notes_sync(session: SyncSessionDep) -> list[str]:
        return list(session.scalars(select(Note.text)))

    add_note = insert(Note).values(text=bindparam("text"))
    texts = select(Note.text).order_by(Note.id)

    @app.post("/direct/notes", status_code=201)
    async def add_direct(text: str, db: ConnectionDep) -> dict:
        await db.execute_committed(add_note, text=text)
        return {"ok": True}

    @app.post("/direct/fail")
    async def add_then_fail(text: str, db: ConnectionDep) -> dict:
        await db.all(add_note, text=text)
        raise HTTPException(400, "rolled back")

    @app.get("/direct/notes")
    async def notes_direct(db: ReadConnectionDep) -> list[str]:
        return [row["text"] for row in await db.all(texts)]

    @app.get("/leak")
    async def leak() -> dict:
        from fastapi_dbpool._app import database_of
        app.state.leaked = await database_of(app).engine.connect()
        return {}

    @app.get("/leak/session")
    async def leak_session() -> dict:
        from fastapi_dbpool._app import database_of
        unit = database_of(app).session()
        session = await unit.__aenter__()  # never exited
        await session.scalars(texts)
        app.state.open_unit = unit
        return {}

    @app.get("/leak/connection")
    async def leak_connection() -> dict:
        from fastapi_dbpool._app import database_of
        unit = database_of(app).connection()
        db = await unit.__aenter__()  # never exited
        await db.all(add_note, text="x")
        app.state.open_unit = unit
        return {}

    return app


@pytest.fixture
async def close_leak(dbpool_app):
    # Torn down after dbpool_client: close what /leak left checked out, quietly.
    yield
    leaked = getattr(dbpool_app.state, "leaked", None)
    if leaked is not None:
        await leaked.invalidate()
        await leaked.close()
    unit = getattr(dbpool_app.state, "open_unit", None)
    if unit is not None:
        try:
            await unit.__aexit__(None, None, None)
        except Exception:
            pass  # the test's connection it ran on is closed by now
"""

TESTS = """
async def test_1_async_commit(dbpool_client):
    assert (await dbpool_client.post("/notes", params={"text": "a"})).status_code == 201
    assert (await dbpool_client.get("/notes")).json() == ["a"]


async def test_2_rolled_back(dbpool_client):
    assert (await dbpool_client.get("/notes")).json() == []


async def test_3_sync_commit(dbpool_client):
    assert (await dbpool_client.post("/sync/notes", params={"text": "s"})).status_code == 201
    assert (await dbpool_client.get("/sync/notes")).json() == ["s"]


async def test_4_rolled_back(dbpool_client, dbpool_database):
    assert (await dbpool_client.get("/sync/notes")).json() == []
    assert dbpool_database.started


async def test_5_leak_is_reported(close_leak, dbpool_client):
    await dbpool_client.get("/leak")


async def test_6_direct_commit(dbpool_client):
    assert (await dbpool_client.post("/direct/notes", params={"text": "d"})).status_code == 201
    assert (await dbpool_client.post("/direct/fail", params={"text": "f"})).status_code == 400
    assert (await dbpool_client.get("/direct/notes")).json() == ["d"]
    assert (await dbpool_client.get("/notes")).json() == ["d"]  # sessions see it too


async def test_7_rolled_back(dbpool_client):
    assert (await dbpool_client.get("/direct/notes")).json() == []


async def test_8_open_session_is_reported(close_leak, dbpool_client):
    await dbpool_client.get("/leak/session")


async def test_9_open_connection_is_reported(close_leak, dbpool_client):
    await dbpool_client.get("/leak/connection")
"""


def _run(pytester: pytest.Pytester, *env: tuple[str, str]) -> pytest.RunResult:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_app=TESTS)
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    for name, value in env:
        pytester._monkeypatch.setenv(name, value)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q", timeout=240)


def _check(result: pytest.RunResult) -> None:
    # Tests 5, 8 and 9 pass, then fail their teardown.
    result.assert_outcomes(passed=9, errors=3)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_5_leak_is_reported*",
            "*connection(s) still checked out*",
            "*ERROR at teardown of test_8_open_session_is_reported*",
            "*1 unit(s) of work still open on the test's connection (1 session)*",
            "*ERROR at teardown of test_9_open_connection_is_reported*",
            "*1 unit(s) of work still open on the test's connection (1 connection)*",
        ]
    )


def test_plugin_on_sqlite(pytester: pytest.Pytester) -> None:
    _check(_run(pytester))


@pytest.mark.postgres_only
def test_plugin_on_postgres(pytester: pytest.Pytester) -> None:
    require_postgres()
    _check(_run(pytester, ("DBPOOL_TEST_URL", ADMIN_URL)))


# Imported before the entry-point plugins (-p comes first): makes `import httpx` and
# `import pytest_asyncio` fail, as in a project that installed fastapi-dbpool alone.
BLOCKER = """
import sys

for name in ("httpx", "pytest_asyncio"):
    sys.modules[name] = None
"""

WITHOUT_EXTRA = """
def test_unrelated():
    assert 1 + 1 == 2


def test_asks_for_the_client(dbpool_client):
    pass
"""


def test_plugin_loads_without_pytest_asyncio_and_httpx(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(blocker=BLOCKER, test_other=WITHOUT_EXTRA)
    result = pytester.runpytest_subprocess(
        "-p", "blocker", "-p", "no:asyncio", "-p", "no:cacheprovider", "-q", timeout=120
    )
    # The plugin loaded (no "ImportError while loading plugin"), the unrelated test
    # passed, and only the test that asks for the client fails, saying what to install.
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        ["*dbpool_client fixture needs pytest-asyncio*pip install 'fastapi-dbpool[[]pytest[]]'*"]
    )
    result.stdout.no_fnmatch_line("*ImportError while loading*")
