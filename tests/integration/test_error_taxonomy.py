"""Each class of database failure gets its one answer, on every path, on both databases.

The taxonomy is in fastapi_dbpool.errors (docs/errors.md). Failures are real where the
database can make them (see faultapp.py); a deferred constraint trigger raises the
SQLSTATE at COMMIT where it cannot.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from sqlalchemy import text

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
