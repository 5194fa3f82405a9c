"""Readiness under pressure: "pool exhausted" is not "database down", and neither hangs.

* The probe has its own connection and timeout: with every pooled connection held and
  requests queued, ``/health/ready`` answers at once, 503, naming the pool.
* A database down at start-up does not stop the app: ``/health/live`` is 200,
  ``/health/ready`` 503 naming the database, requests 503; all recover when it is back.
  This runs on a throwaway cluster (tests.pgcluster), never the shared server.
* ``DB_CONNECT_TIMEOUT`` bounds a connection attempt to a server that accepts TCP and
  never answers (a "blackhole").
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from fastapi_dbpool import DatabaseSettings
from tests.backends import migrate
from tests.conftest import make_settings
from tests.integration.test_exhaustion import MARGIN_S
from tests.pgcluster import PgCluster, pg_cluster
from tests.pressure_app import create_app, started, until
from tests.servers import free_port

__all__ = ["pg_cluster"]  # the fixture, imported for this module's tests

PROBE_TIMEOUT = 1.0


async def _ready(client: httpx.AsyncClient) -> tuple[httpx.Response, float]:
    started_at = time.perf_counter()
    response = await client.get("/health/ready")
    return response, time.perf_counter() - started_at


@pytest.mark.timing
async def test_ready_reports_pool_exhausted_without_queueing(database_url: str) -> None:
    settings = make_settings(database_url, pool_size=2, max_overflow=0, pool_timeout=5)
    app = create_app(settings, probe_timeout=PROBE_TIMEOUT)
    database = app.state.fastapi_dbpool
    async with started(app) as client:
        assert (await client.get("/health/ready")).status_code == 200
        tasks = [asyncio.create_task(client.get("/hold?seconds=1")) for _ in range(3)]
        await until(lambda: database.pool_snapshot().waiting >= 1)
        response, elapsed = await _ready(client)
        assert elapsed < PROBE_TIMEOUT, elapsed  # answered, not queued behind the pool
        assert response.status_code == 503
        checks = response.json()["checks"]
        assert checks["database"]["status"] == "ok"
        assert checks["pool"]["status"] == "failing"
        assert checks["pool"]["reason"].startswith("exhausted")
        assert [r.status_code for r in await asyncio.gather(*tasks)] == [200] * 3
        assert (await client.get("/health/ready")).status_code == 200


@pytest.mark.postgres_only
async def test_ready_lists_the_replica_pool(database_url: str) -> None:
    """The replica's pool is reported like the primary's; exhausted, the app is degraded.

    The "replica" is the primary itself here: what is under test is the pool's report,
    not replication (tests/integration/test_replica.py has a real standby).
    """
    settings = make_settings(
        database_url, pool_size=1, max_overflow=0, pool_timeout=5, replica_url=database_url
    )
    app = create_app(settings, probe_timeout=PROBE_TIMEOUT)
    database = app.state.fastapi_dbpool
    async with started(app) as client:
        ready = (await client.get("/health/ready")).json()
        assert ready["checks"]["replica_pool"]["status"] == "ok"
        replica = database.replica
        tasks = [asyncio.create_task(client.get("/hold?seconds=1")) for _ in range(2)]
        await until(lambda: replica.pool_snapshot().waiting >= 1)
        response, _ = await _ready(client)
        assert response.status_code == 200  # the replica is optional: reads use the primary
        body = response.json()
        assert body["status"] == "degraded"
        assert body["checks"]["replica_pool"]["status"] == "failing"
        assert body["checks"]["replica_pool"]["reason"].startswith("exhausted")
        assert body["checks"]["pool"]["status"] == "ok"
        assert [r.status_code for r in await asyncio.gather(*tasks)] == [200] * 2


@pytest.fixture
def cluster_url(pg_cluster: PgCluster) -> Iterator[str]:
    """The throwaway cluster, migrated; running again after the test, whatever it did."""
    migrate(pg_cluster.url)
    yield pg_cluster.url
    if not pg_cluster.running:
        pg_cluster.start()


@pytest.mark.postgres_only
@pytest.mark.slow
async def test_database_down_at_startup(pg_cluster: PgCluster, cluster_url: str) -> None:
    from users_api.main import create_app as create_users_api

    pg_cluster.stop()
    settings = DatabaseSettings(url=cluster_url, pool_size=2, connect_timeout=2)
    app = create_users_api(settings)
    async with started(app) as client:
        assert (await client.get("/health/live")).status_code == 200
        response, elapsed = await _ready(client)
        assert response.status_code == 503
        assert elapsed < PROBE_TIMEOUT + MARGIN_S
        checks = response.json()["checks"]
        assert checks["database"]["status"] == "failing"
        assert checks["database"]["reason"] == "unreachable"
        assert checks["pool"]["status"] == "ok"
        users = await client.get("/users")
        assert users.status_code == 503
        assert users.json()["reason"] == "database_unavailable"
        assert "retry-after" in users.headers

        await asyncio.to_thread(pg_cluster.start)
        assert (await client.get("/health/ready")).status_code == 200
        assert (await client.get("/users")).status_code == 200


@pytest.mark.postgres_only
@pytest.mark.slow
async def test_database_down_at_runtime(pg_cluster: PgCluster, cluster_url: str) -> None:
    """Pooled connections die with the server: 503 while it is down, 200 when it is back."""
    from users_api.main import create_app as create_users_api

    settings = DatabaseSettings(url=cluster_url, pool_size=2, connect_timeout=2)
    app = create_users_api(settings)
    async with started(app) as client:
        created = await client.post("/users", json={"name": "A", "email": "a@x.com"})
        assert created.status_code == 201
        await asyncio.to_thread(pg_cluster.stop)
        for path in ("/users", f"/users/{created.json()['id']}"):
            response = await client.get(path)
            assert response.status_code == 503, response.text
            assert response.json()["reason"] == "database_unavailable"
        write = await client.post("/users", json={"name": "B", "email": "b@x.com"})
        assert write.status_code == 503, write.text
        ready = await client.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["checks"]["database"]["reason"] == "unreachable"

        await asyncio.to_thread(pg_cluster.start)
        assert (await client.get("/health/ready")).status_code == 200
        assert (await client.get("/users")).status_code == 200


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A port that accepts TCP connections (the kernel's backlog) and never answers."""
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen(64)
        yield port


@pytest.mark.postgres_only
@pytest.mark.timing
async def test_connect_timeout_bounds_a_silent_server(blackhole: int, backend: str) -> None:
    connect_timeout = 0.5
    settings = DatabaseSettings(
        url=f"postgresql://postgres@127.0.0.1:{blackhole}/test",
        connect_timeout=connect_timeout,
        pool_timeout=5,
    )
    app = create_app(settings, probe_timeout=PROBE_TIMEOUT)
    async with started(app) as client:
        started_at = time.perf_counter()
        response = await client.get("/quick")
        elapsed = time.perf_counter() - started_at
        assert response.status_code == 503
        assert response.json()["reason"] == "database_unavailable"
        assert connect_timeout - 0.05 <= elapsed <= connect_timeout + MARGIN_S, elapsed
        ready, elapsed = await _ready(client)
        assert ready.status_code == 503
        assert ready.json()["checks"]["database"]["status"] == "failing"
        assert elapsed <= connect_timeout + MARGIN_S, elapsed
