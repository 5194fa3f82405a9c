"""Each class of database failure gets its one answer, on every path, on both databases.

The taxonomy is in fastapi_dbpool.errors (docs/errors.md). Failures are real where the
database can make them (see faultapp.py); a deferred constraint trigger raises the
SQLSTATE at COMMIT where it cannot.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError, OperationalError

from fastapi_dbpool import DatabaseSettings
from fastapi_dbpool.errors import classify, is_retryable
from tests.conftest import make_settings
from tests.integration.faultapp import (
    Rendezvous,
    build_app,
    create_tables,
    drop_tables,
    fault_client,
)

PATHS = ["session", "direct", "committed", "sync"]


@pytest.fixture
def fault_settings(database_url: str) -> Iterator[DatabaseSettings]:
    settings = make_settings(
        database_url, pool_size=4, max_overflow=0, pool_timeout=5, sqlite_busy_timeout_ms=200
    )
    create_tables(settings)
    yield settings
    drop_tables(settings)


@pytest.fixture
def meeting() -> Rendezvous:
    return Rendezvous()


@pytest.fixture
async def client(
    fault_settings: DatabaseSettings, meeting: Rendezvous
) -> AsyncIterator[httpx.AsyncClient]:
    async with fault_client(fault_settings, meeting) as client:
        yield client


def assert_answer(response: httpx.Response, status: int, code: str, reason: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code, body
    assert body["reason"] == reason, body
    if status == 503:
        assert int(response.headers["retry-after"]) >= 1
    # Never the driver's text.
    assert "injected" not in response.text and "SQLSTATE" not in response.text


# -- at COMMIT, through each path (PostgreSQL: a deferred trigger raises the SQLSTATE) ----

COMMIT_FAULTS = [
    ("40001", 503, "serialization_failure", "transient"),
    ("40P01", 503, "deadlock_detected", "transient"),
    ("55P03", 503, "lock_not_available", "transient"),
    ("53100", 503, "insufficient_resources", "database_unavailable"),
    ("53300", 503, "insufficient_resources", "database_unavailable"),
    ("57P03", 503, "cannot_connect_now", "database_unavailable"),
    ("57P01", 503, "admin_shutdown", "database_unavailable"),
    ("P0001", 409, "raise_exception", "conflict"),
    ("23514", 409, "check_violation", "conflict"),
    ("23505", 409, "unique_violation", "conflict"),
]


@pytest.mark.postgres_only
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("sqlstate", "status", "code", "reason"), COMMIT_FAULTS)
async def test_failure_at_commit_is_answered_by_its_class(
    client: httpx.AsyncClient,
    backend: str,
    path: str,
    sqlstate: str,
    status: int,
    code: str,
    reason: str,
) -> None:
    response = await client.post(f"/fault/{path}", params={"code": sqlstate})
    assert_answer(response, status, code, reason)
    # Nothing was committed, and the pool serves the next request.
    assert (await client.post("/write")).status_code == 200


@pytest.mark.sqlite_only  # PostgreSQL: test_failure_at_commit_is_answered_by_its_class
@pytest.mark.parametrize("path", PATHS)
async def test_trigger_refusal_on_sqlite_is_a_409(
    client: httpx.AsyncClient, backend: str, path: str
) -> None:
    response = await client.post(f"/fault/{path}", params={"code": "x"})
    assert_answer(response, 409, "integrity_error", "conflict")


# -- real failures --------------------------------------------------------------------


@pytest.mark.postgres_only
async def test_conflicting_serializable_transactions(
    client: httpx.AsyncClient, backend: str
) -> None:
    first, second = await asyncio.gather(
        client.post("/serializable/1"), client.post("/serializable/2")
    )
    codes = sorted([first.status_code, second.status_code])
    assert codes == [200, 503], (first.text, second.text)
    failed = first if first.status_code == 503 else second
    assert_answer(failed, 503, "serialization_failure", "transient")


@pytest.mark.postgres_only
async def test_rows_locked_in_opposite_order_deadlock(
    client: httpx.AsyncClient, backend: str
) -> None:
    first, second = await asyncio.gather(client.post("/lock/1/2"), client.post("/lock/2/1"))
    codes = sorted([first.status_code, second.status_code])
    assert codes == [200, 503], (first.text, second.text)
    failed = first if first.status_code == 503 else second
    assert_answer(failed, 503, "deadlock_detected", "transient")


@pytest.mark.postgres_only
async def test_row_locked_by_another_connection(
    client: httpx.AsyncClient, backend: str, fault_settings: DatabaseSettings
) -> None:
    import psycopg

    from tests.backends import libpq_url

    with psycopg.connect(
        libpq_url(fault_settings.sqlalchemy_url.render_as_string(False))
    ) as holder:
        holder.execute("SELECT id FROM dbpool_fault WHERE id = 1 FOR UPDATE")
        response = await client.post("/nowait/1")
        assert_answer(response, 503, "lock_not_available", "transient")
    assert (await client.post("/nowait/1")).status_code == 200


@pytest.mark.postgres_only
async def test_backend_terminated_mid_request(client: httpx.AsyncClient, backend: str) -> None:
    response = await client.post("/terminated")
    assert response.status_code == 503, response.text
    # asyncpg reports the kill as 57P01 when it reads the notice, else as a lost connection.
    assert response.json()["code"] in ("admin_shutdown", "connection_lost")
    assert response.json()["reason"] == "database_unavailable"
    assert int(response.headers["retry-after"]) >= 1
    assert (await client.post("/write")).status_code == 200


@pytest.mark.sqlite_only  # PostgreSQL's lock waits are the tests above
async def test_sqlite_write_lock_held_outside_the_process_gate(
    client: httpx.AsyncClient, backend: str, fault_settings: DatabaseSettings
) -> None:
    holder = sqlite3.connect(fault_settings.sqlalchemy_url.database, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        response = await client.post("/write")
        assert_answer(response, 503, "sqlite_busy", "transient")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert (await client.post("/write")).status_code == 200


async def test_row_deleted_under_the_orm_is_409_row_changed(client: httpx.AsyncClient) -> None:
    response = await client.post("/stale/2")
    assert_answer(response, 409, "row_changed", "row_changed")


async def test_background_work_sees_the_same_classes(
    fault_settings: DatabaseSettings, meeting: Rendezvous, backend: str
) -> None:
    # Outside a request there is no HTTP answer, but the same classification: what
    # Database.transaction() retries and what a worker logs.
    app = build_app(fault_settings, meeting)
    database = app.state.fastapi_dbpool
    async with database:
        with pytest.raises(Exception) as raised:
            async with database.session() as session:
                await session.execute(text("DELETE FROM dbpool_fault WHERE id = 1"))
                await session.execute(
                    text("INSERT INTO dbpool_fault (id, n) VALUES (2, 0)")
                )  # id 2 exists: unique violation
        failure = classify(raised.value)
        assert failure is not None and failure.code == "unique_violation"
        assert not is_retryable(raised.value)


# -- integrity errors: the 409 names what conflicted --------------------------------------

CONFLICT_PATHS = ["session", "direct", "sync"]
# (kind, code, what PostgreSQL names, what SQLite names). SQLite reports a unique or
# not-null violation by its columns and a foreign key violation by nothing at all.
CONFLICT_CASES = [
    ("unique", "unique_violation", "uq_dbpool_parent_name", "dbpool_parent.name"),
    ("foreign_key", "foreign_key_violation", "fk_dbpool_child_parent", None),
    ("not_null", "not_null_violation", "dbpool_child.label", "dbpool_child.label"),
]


@pytest.mark.parametrize("path", CONFLICT_PATHS)
@pytest.mark.parametrize(("kind", "code", "pg_target", "sqlite_target"), CONFLICT_CASES)
async def test_integrity_error_409_names_the_constraint(
    client: httpx.AsyncClient,
    backend: str,
    path: str,
    kind: str,
    code: str,
    pg_target: str,
    sqlite_target: str | None,
) -> None:
    response = await client.post(f"/conflict/{path}/{kind}")
    assert_answer(response, 409, code, "conflict")
    detail = response.json()["detail"]
    target = pg_target if backend == "postgres" else sqlite_target
    if target is None:  # SQLite's "FOREIGN KEY constraint failed" names nothing
        assert detail.endswith(")."), detail
        assert "dbpool" not in detail, detail
    else:
        assert detail.endswith(f": {target}."), detail
    assert "p-one" not in detail and "999" not in detail  # names, never values


# -- a bug is a bug on both databases -----------------------------------------------------

BAD_SQL = [
    "SELECT * FROM dbpool_no_such_table",
    "SELECT no_such_column FROM dbpool_fault",
    "SELEC 1",
]


@pytest.mark.parametrize("statement", BAD_SQL)
async def test_bad_sql_is_a_bug_not_a_lost_connection(
    fault_settings: DatabaseSettings, meeting: Rendezvous, backend: str, statement: str
) -> None:
    # SQLite answers these with SQLITE_ERROR (1): a bug, as PostgreSQL's 42P01/42703/42601.
    app = build_app(fault_settings, meeting)
    database = app.state.fastapi_dbpool
    async with database:
        with pytest.raises(DBAPIError) as raised:
            async with database.session() as session:
                await session.execute(text(statement))
    assert classify(raised.value) is None, raised.value


async def test_bad_sql_in_a_request_is_a_500(client: httpx.AsyncClient, backend: str) -> None:
    response = await client.post("/bad-sql")
    assert response.status_code == 500, response.text
    assert (await client.post("/write")).status_code == 200


def _sqlite_error(path: Path, *statements: str, timeout: float = 5.0) -> DBAPIError:
    """The error SQLAlchemy raises for the last of *statements* on the file *path*."""
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": timeout})
    try:
        with engine.connect() as conn:
            for statement in statements[:-1]:
                conn.exec_driver_sql(statement)
            with pytest.raises(DBAPIError) as raised:
                conn.exec_driver_sql(statements[-1])
            return raised.value
    finally:
        engine.dispose()


def test_sqlite_busy_is_still_transient(tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("CREATE TABLE t (x)")
        holder.execute("BEGIN IMMEDIATE")
        error = _sqlite_error(path, "INSERT INTO t VALUES (1)", timeout=0.05)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    failure = classify(error)
    assert failure is not None and failure.code == "sqlite_busy" and failure.status == 503


def test_sqlite_full_is_still_insufficient_resources(tmp_path: Path) -> None:
    # max_page_count caps the file: the next page it needs is SQLITE_FULL (13).
    error = _sqlite_error(
        tmp_path / "full.db",
        "CREATE TABLE t (x)",
        "PRAGMA max_page_count = 3",
        "INSERT INTO t VALUES (zeroblob(100000))",
    )
    assert error.orig.sqlite_errorcode == sqlite3.SQLITE_FULL
    failure = classify(error)
    assert failure is not None and failure.code == "insufficient_resources"
    assert failure.status == 503


def test_sqlite_closed_connection_is_connection_lost(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'closed.db'}")
    try:
        with engine.connect() as conn:
            conn.connection.dbapi_connection.close()  # type: ignore[union-attr]
            with pytest.raises(DBAPIError) as raised:
                conn.exec_driver_sql("SELECT 1")
    finally:
        engine.dispose()
    failure = classify(raised.value)
    assert failure is not None and failure.code == "connection_lost"
    # aiosqlite's own "no active connection" has no result code: lost as well.
    gone = OperationalError("SELECT 1", {}, sqlite3.OperationalError("no active connection"))
    assert classify(gone) is not None and classify(gone).code == "connection_lost"
