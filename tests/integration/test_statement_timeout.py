"""DB_STATEMENT_TIMEOUT_MS: a statement past its deadline is answered 503, and the pool goes on.

On PostgreSQL the server cancels the statement (``statement_timeout``); on SQLite the
connection's progress handler interrupts it. Either way the answer is 503 with reason
``statement_timeout``, never 500, and the same connection serves the next request:
it is not thrown away (no invalidation, no new connection).

Behind PgBouncer, see test_pgbouncer_mode.py.
"""

from __future__ import annotations

import time

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from fastapi_dbpool import Database
from fastapi_dbpool.errors import StatementTimeout, classify
from tests.conftest import make_settings
from tests.pressure_app import create_app, started

DEADLINE_MS = 300


# The slow statement through a session, direct connections, and a sync session.
SLOW_PATHS = ["/slow", "/slow-direct?write=false", "/slow-direct?write=true", "/slow-sync"]


async def assert_deadline_enforced(client: httpx.AsyncClient, path: str = "/slow") -> None:
    """A slow statement is cut at the deadline and answered 503 statement_timeout."""
    started_at = time.perf_counter()
    response = await client.get(path, params={"seconds": 5})
    elapsed = time.perf_counter() - started_at
    assert response.status_code == 503, response.text
    assert response.json()["reason"] == "statement_timeout"
    assert "took too long" in response.json()["detail"]
    assert "retry-after" in response.headers
    assert DEADLINE_MS / 1000 - 0.05 <= elapsed < 2.5, elapsed


async def assert_same_connection_serves(
    client: httpx.AsyncClient, app: FastAPI, path: str = "/slow"
) -> None:
    """The next request succeeds on the connection that timed out: nothing replaced."""
    response = await client.get(path, params={"seconds": 0})
    assert response.status_code == 200, response.text
    database = app.state.fastapi_dbpool
    pool = database.sync if path.startswith("/slow-sync") else database
    snapshot = pool.pool_snapshot()
    assert snapshot.invalidations_total == 0
    assert snapshot.connects_total == 1


@pytest.mark.timing
@pytest.mark.parametrize("path", SLOW_PATHS)
async def test_statement_timeout_is_503_and_connection_reusable(
    database_url: str, path: str
) -> None:
    settings = make_settings(
        database_url, pool_size=1, max_overflow=0, statement_timeout_ms=DEADLINE_MS
    )
    app = create_app(settings)
    async with started(app) as client:
        await assert_deadline_enforced(client, path)
        await assert_same_connection_serves(client, app, path)
        # A statement within the deadline is not affected.
        assert (await client.get("/slow?seconds=0.01")).status_code == 200


@pytest.mark.postgres_only
async def test_command_timeout_of_the_url_is_a_statement_timeout_too(database_url: str) -> None:
    """With the library's deadline off, a ``command_timeout`` in the URL still gets a 503."""
    settings = make_settings(
        database_url + "?command_timeout=0.5", no_answer_timeout_s=0, statement_timeout_ms=0
    )
    async with Database(settings) as database:
        started_at = time.monotonic()
        with pytest.raises(StatementTimeout, match="command_timeout of DATABASE_URL") as raised:
            async with database.session(read_only=True) as session:
                await session.execute(text("SELECT pg_sleep(3)"))
        assert time.monotonic() - started_at < 2.5
        failure = classify(raised.value)
        assert failure is not None and failure.status == 503
        async with database.session(read_only=True) as session:
            assert (await session.execute(text("SELECT 1"))).scalar() == 1
