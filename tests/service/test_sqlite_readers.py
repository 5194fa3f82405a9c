"""SQLite: readers never wait for writers, even when every writer is stuck behind a lock.

Issue 9's reproduction: another process holds SQLite's write lock; the service's
writers queue for it. They used to hold every pooled connection while they queued,
so reads waited DB_POOL_TIMEOUT and got 503 ``pool_exhausted``. Writers now queue for
the write gate before they take a connection: reads keep answering at their normal
latency, and the writers all succeed once the lock is released.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from fastapi_dbpool import Database, DatabaseSettings
from tests.conftest import _lifespan_client, make_settings
from tests.polling import eventually

LOCK_SECONDS = 2.5
WRITERS = 6
READ_PATHS = ["/users/{id}", "/users", "/users/{id}/sync", "/items?owner_id={id}"]

# Another process: takes the write lock, says so, holds it, lets go.
_HOLDER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("ROLLBACK")
"""


@pytest.fixture
def settings(database_url: str) -> DatabaseSettings:
    # The set-up: a pool of 2; writers may wait out the other process's lock.
    return make_settings(
        database_url, pool_size=2, max_overflow=0, pool_timeout=10, sqlite_busy_timeout_ms=8000
    )


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async for client in _lifespan_client(app):
        yield client


async def _read_latencies(client: httpx.AsyncClient, user_id: int, until: float) -> list[float]:
    latencies = []
    while time.monotonic() < until:
        for path in READ_PATHS:
            started = time.perf_counter()
            response = await client.get(path.format(id=user_id))
            latencies.append(time.perf_counter() - started)
            assert response.status_code == 200, (path, response.text)
    return latencies


@pytest.mark.sqlite_only  # PostgreSQL has row locks: readers never wait there
@pytest.mark.timing
async def test_reads_answer_at_normal_latency_while_writers_wait_for_a_lock(
    client: httpx.AsyncClient, backend: str, settings: DatabaseSettings, database: Database
) -> None:
    user = (await client.post("/users", json={"name": "R", "email": "r@x.com"})).json()
    baseline = await _read_latencies(client, user["id"], time.monotonic() + 0.5)

    path = settings.sqlalchemy_url.database
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _HOLDER, str(path), str(LOCK_SECONDS), stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout is not None
        assert (await holder.stdout.readline()).strip() == b"locked"
        locked_at = time.monotonic()
        writers = [
            asyncio.create_task(client.patch(f"/users/{user['id']}", json={"name": f"w{i}"}))
            for i in range(WRITERS // 2)
        ] + [
            asyncio.create_task(client.post("/items", json={"title": "t", "owner_id": user["id"]}))
            for _ in range(WRITERS // 2)
        ]
        # Let the writers queue: one in SQLite's busy wait, the rest at the write gate.
        gate = database.write_gate
        assert gate is not None
        await eventually(
            lambda: gate.waiting == WRITERS - 1, timeout=5, what=f"{WRITERS - 1} writers queued"
        )
        assert not any(writer.done() for writer in writers)
        during = await _read_latencies(client, user["id"], locked_at + LOCK_SECONDS - 0.3)
        responses = await asyncio.gather(*writers)
    finally:
        await asyncio.wait_for(holder.wait(), timeout=30)

    assert [r.status_code for r in responses] == [200] * (WRITERS // 2) + [201] * (WRITERS // 2)
    base_median, median, worst = statistics.median(baseline), statistics.median(during), max(during)
    print(
        f"\nreads while {WRITERS} writers wait for another process's lock (pool of 2): "
        f"{len(during)} reads, median {median * 1000:.1f} ms, max {worst * 1000:.1f} ms; "
        f"without the lock: median {base_median * 1000:.1f} ms"
    )
    assert len(during) >= 20
    # Normal latency: the same order as without the lock, far from DB_POOL_TIMEOUT.
    assert median < max(10 * base_median, 0.05), (median, base_median)
    assert worst < 1.0, worst
