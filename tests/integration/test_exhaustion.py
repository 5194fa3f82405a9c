"""Pool exhaustion is answered 503 within DB_POOL_TIMEOUT, and DB_MAX_WAITING sheds at once.

The app under test is tests.pressure_app: ``GET /hold`` takes a pooled connection and
keeps it. With ``pool_size=2, max_overflow=0`` two requests hold the pool; the rest
must be answered ``503`` with ``Retry-After`` after ``DB_POOL_TIMEOUT`` (plus at most
``MARGIN_S``, the margin stated in docs/pool-under-pressure.md), never 500, never later.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import make_settings
from tests.pressure_app import create_app, started, until
from tests.servers import uvicorn_server

# The margin past DB_POOL_TIMEOUT within which a waiting request is answered; the
# same figure is stated in docs/pool-under-pressure.md.
MARGIN_S = 0.5

pytestmark = pytest.mark.timing


async def _timed(client: httpx.AsyncClient, method: str, url: str) -> tuple[httpx.Response, float]:
    started_at = time.perf_counter()
    response = await client.request(method, url)
    return response, time.perf_counter() - started_at


def assert_busy_answer(response: httpx.Response) -> None:
    """A 503 that tells the client the database is busy and when to retry."""
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/json"
    assert int(response.headers["retry-after"]) >= 1
    body = response.json()
    assert body["reason"] == "pool_exhausted"
    assert "database is busy" in body["detail"]


def assert_503s_came_after_the_timeout(
    results: list[tuple[httpx.Response, float]], timeout: float
) -> None:
    """Every 503 in *results* is a busy answer, given once *timeout* ran out (not before)."""
    for response, elapsed in results:
        if response.status_code == 503:
            assert_busy_answer(response)
            assert timeout - 0.05 <= elapsed <= timeout + MARGIN_S, elapsed


async def test_exhaustion_is_503_within_pool_timeout(database_url: str) -> None:
    timeout = 1.0
    settings = make_settings(database_url, pool_size=2, max_overflow=0, pool_timeout=timeout)
    app = create_app(settings)
    async with started(app) as client:
        results = await asyncio.gather(
            *(_timed(client, "GET", "/hold?seconds=2.5") for _ in range(8))
        )
        snapshot = app.state.fastapi_dbpool.pool_snapshot()
    statuses = sorted(response.status_code for response, _ in results)
    assert statuses == [200] * 2 + [503] * 6
    assert_503s_came_after_the_timeout(results, timeout)
    assert snapshot.timeouts_total == 6
    assert snapshot.waiting == 0


async def test_max_waiting_sheds_at_once(database_url: str) -> None:
    timeout = 2.0
    settings = make_settings(
        database_url, pool_size=2, max_overflow=0, pool_timeout=timeout, max_waiting=2
    )
    app = create_app(settings)
    async with started(app) as client:
        holders = [asyncio.create_task(_timed(client, "GET", "/hold?seconds=3")) for _ in range(2)]
        await until(lambda: app.state.fastapi_dbpool.pool_snapshot().checked_out == 2)
        waiters = [asyncio.create_task(_timed(client, "GET", "/hold?seconds=0")) for _ in range(2)]
        await until(lambda: app.state.fastapi_dbpool.pool_snapshot().waiting == 2)
        shed = await asyncio.gather(*(_timed(client, "GET", "/hold?seconds=0") for _ in range(6)))
        waited = await asyncio.gather(*waiters)
        held = await asyncio.gather(*holders)
    assert [r.status_code for r, _ in held] == [200, 200]
    for response, elapsed in shed:
        assert_busy_answer(response)
        # At once: well before the pool timeout the waiters are bound by.
        assert elapsed < timeout / 4, elapsed
    for response, elapsed in waited:
        assert_busy_answer(response)
        assert timeout - 0.05 <= elapsed <= timeout + MARGIN_S, elapsed


@pytest.mark.sqlite_only
async def test_write_gate_wait_is_503_not_500(database_url: str) -> None:
    """SQLite serialises writers behind the write gate; waiting on it also ends in 503."""
    timeout = 1.0
    settings = make_settings(database_url, pool_size=5, max_overflow=0, pool_timeout=timeout)
    app = create_app(settings)
    async with started(app) as client:
        results = await asyncio.gather(
            *(_timed(client, "POST", "/hold-write?seconds=2") for _ in range(4))
        )
    statuses = sorted(response.status_code for response, _ in results)
    # Connections to spare (5 for 4 writers): only the gate can make three of them wait.
    assert statuses == [200] + [503] * 3
    assert_503s_came_after_the_timeout(results, timeout)


# Another process: takes SQLite's write lock, says so, holds it for argv[2] seconds.
_LOCK_HOLDER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("ROLLBACK")
"""


@pytest.mark.sqlite_only
async def test_writers_behind_another_process_lock_are_counted_timeouts(
    database_url: str,
) -> None:
    """Writers queued at the gate behind another process's lock: 503 and counted.

    The writer that holds the gate waits in SQLite's busy handler (DB_SQLITE_BUSY_TIMEOUT_MS,
    longer than the lock here) and succeeds; the others are answered 503 after
    DB_POOL_TIMEOUT, and each counts in the pool's ``timeouts_total``.
    """
    timeout, writers, lock_s = 1.0, 5, 2.5
    settings = make_settings(
        database_url,
        pool_size=5,
        max_overflow=0,
        pool_timeout=timeout,
        sqlite_busy_timeout_ms=8000,
    )
    app = create_app(settings)
    async with started(app) as client:
        assert (await client.get("/quick")).status_code == 200  # the file is in WAL mode
        holder = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _LOCK_HOLDER,
            str(settings.sqlalchemy_url.database),
            str(lock_s),
            stdout=subprocess.PIPE,
        )
        try:
            assert holder.stdout is not None
            assert (await holder.stdout.readline()).strip() == b"locked"
            results = await asyncio.gather(
                *(_timed(client, "POST", "/hold-write?seconds=0") for _ in range(writers))
            )
        finally:
            await asyncio.wait_for(holder.wait(), timeout=30)
        snapshot = app.state.fastapi_dbpool.pool_snapshot()
    statuses = sorted(response.status_code for response, _ in results)
    assert statuses == [200] + [503] * (writers - 1)
    assert_503s_came_after_the_timeout(results, timeout)
    assert snapshot.timeouts_total == writers - 1
    assert snapshot.waiting == snapshot.writers_waiting == 0


@pytest.mark.sqlite_only
async def test_writer_waits_for_gate_and_connection_within_one_pool_timeout(
    database_url: str,
) -> None:
    """A writer queued at the gate, then for a connection, is answered within DB_POOL_TIMEOUT.

    One connection, held by a reader. Writer A takes the gate and waits for the
    connection; writer B queues at the gate behind it. When A gives up, B gets the gate
    with only what is left of its own DB_POOL_TIMEOUT to wait for the connection: the
    two waits share one deadline, not one each.
    """
    timeout = 1.0
    settings = make_settings(database_url, pool_size=1, max_overflow=0, pool_timeout=timeout)
    app = create_app(settings)
    database = app.state.fastapi_dbpool
    async with started(app) as client:
        reader = asyncio.create_task(_timed(client, "GET", "/hold?seconds=2"))
        await until(lambda: database.pool_snapshot().checked_out == 1)
        first = asyncio.create_task(_timed(client, "POST", "/hold-write?seconds=0"))
        await until(lambda: database.pool_snapshot().waiting == 1 and database.write_gate.held)
        second = asyncio.create_task(_timed(client, "POST", "/hold-write?seconds=0"))
        await until(lambda: database.write_gate.waiting == 1)
        results = [await first, await second]
        assert (await reader)[0].status_code == 200
        snapshot = database.pool_snapshot()
    assert [response.status_code for response, _ in results] == [503, 503]
    assert_503s_came_after_the_timeout(results, timeout)
    assert snapshot.timeouts_total == 2


@pytest.mark.sqlite_only
async def test_max_waiting_sheds_writers_queued_at_the_gate(database_url: str) -> None:
    """DB_MAX_WAITING counts writers queued for SQLite's write gate: beyond it, 503 at once."""
    timeout = 2.0
    settings = make_settings(
        database_url, pool_size=5, max_overflow=0, pool_timeout=timeout, max_waiting=2
    )
    app = create_app(settings)
    database = app.state.fastapi_dbpool
    async with started(app) as client:
        holder = asyncio.create_task(_timed(client, "POST", "/hold-write?seconds=2.5"))
        await until(lambda: database.write_gate.held)
        queued = [
            asyncio.create_task(_timed(client, "POST", "/hold-write?seconds=0")) for _ in range(2)
        ]
        await until(lambda: database.pool_snapshot().writers_waiting == 2)
        assert database.pool_snapshot().waiting == 2
        shed = await asyncio.gather(
            *(_timed(client, "POST", "/hold-write?seconds=0") for _ in range(3))
        )
        waited = await asyncio.gather(*queued)
        held, _ = await holder
        snapshot = database.pool_snapshot()
    assert held.status_code == 200
    for response, elapsed in shed:
        assert_busy_answer(response)
        assert response.json()["code"] == "too_many_waiting"
        assert elapsed < timeout / 4, elapsed
    for response, elapsed in waited:
        assert_busy_answer(response)
        assert timeout - 0.05 <= elapsed <= timeout + MARGIN_S, elapsed
    assert snapshot.timeouts_total == 5


@pytest.mark.slow
async def test_exhaustion_over_http(database_url: str) -> None:
    """The same answers through a real uvicorn process and real sockets."""
    timeout = 1.0
    env = {
        "DATABASE_URL": database_url,
        "DB_POOL_SIZE": "2",
        "DB_MAX_OVERFLOW": "0",
        "DB_POOL_TIMEOUT": str(timeout),
    }
    with uvicorn_server("tests.pressure_app:from_env", env, factory=True) as server:
        limits = httpx.Limits(max_connections=20)
        async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=10) as client:
            results = await asyncio.gather(
                *(_timed(client, "GET", "/hold?seconds=2.5") for _ in range(8))
            )
            pool = (await client.get("/_pool", params={"gc": "true"})).json()
        log = server.log()
    statuses = sorted(response.status_code for response, _ in results)
    assert statuses == [200] * 2 + [503] * 6
    assert_503s_came_after_the_timeout(results, timeout)
    assert pool["checked_out"] == 0
    assert pool["timeouts_total"] == 6
    assert "Traceback" not in log and "non-checked-in" not in log, log
