"""Read replicas: read-only sessions and connections go to a real streaming standby.

PostgreSQL only. A throwaway primary and a hot standby made with pg_basebackup; the
shared server is not involved.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from sqlalchemy import text

from fastapi_dbpool import Database, DatabaseSettings
from fastapi_dbpool.postgres import replica as replica_module
from fastapi_dbpool.testing import assert_pool_idle
from tests.backends import migrate, require_postgres
from tests.pgcluster import PgCluster, server_bindir
from tests.pgreplica import primary_and_replica, wait_replayed

pytestmark = [pytest.mark.postgres_only, pytest.mark.slow]


@pytest.fixture(scope="module")
def clusters() -> Iterator[tuple[PgCluster, PgCluster]]:
    require_postgres()
    if server_bindir() is None:
        pytest.fail("PostgreSQL server binaries (pg_config --bindir) are missing")
    with primary_and_replica() as (primary, standby):
        migrate(primary.url)
        wait_replayed(primary.url, standby.url)
        yield primary, standby


@pytest.fixture
def backend() -> str:
    return "postgres"


class Clock:
    """A monotonic clock that moves only when told to, for ReplicaRouter's retry window."""

    def __init__(self) -> None:
        self.now = time.monotonic()

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """Replace the time module replica choice reads (and only there)."""
    fake = Clock()
    monkeypatch.setattr(replica_module, "time", fake)
    return fake


@pytest.fixture
async def app_and_client(
    clusters: tuple[PgCluster, PgCluster],
) -> AsyncIterator[tuple[Database, httpx.AsyncClient]]:
    from users_api.main import create_app

    primary, standby = clusters
    settings = DatabaseSettings(
        url=primary.url,
        replica_url=standby.url,
        pool_size=3,
        pool_timeout=2,
        connect_timeout=2,
        replica_retry_s=30,  # a patched clock moves through it (see Clock)
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield app.state.fastapi_dbpool, client
        database: Database = app.state.fastapi_dbpool
        await assert_pool_idle(database)


async def in_recovery(database: Database, *, read_only: bool) -> bool:
    async with database.session(read_only=read_only) as session:
        return bool(await session.scalar(text("SELECT pg_is_in_recovery()")))


async def test_reads_go_to_the_replica_and_writes_to_the_primary(app_and_client, clusters) -> None:
    database, client = app_and_client
    primary, standby = clusters
    assert await in_recovery(database, read_only=True)
    assert not await in_recovery(database, read_only=False)

    created = await client.post("/users", json={"name": "R", "email": "r@replica.example.com"})
    assert created.status_code == 201
    wait_replayed(primary.url, standby.url)
    replica_before = database.replica.pool_snapshot().checkouts_total
    primary_before = database.pool_snapshot().checkouts_total
    read = await client.get(f"/users/{created.json()['id']}")
    assert read.status_code == 200 and read.json() == created.json()
    assert database.replica.pool_snapshot().checkouts_total == replica_before + 1
    assert database.pool_snapshot().checkouts_total == primary_before

    ready = await client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json()["checks"]["replica"]["status"] == "ok"
    metrics = (await client.get("/metrics")).text
    assert 'dbpool_checkouts_total{pool="replica"}' in metrics


async def test_replica_down_reads_fall_back_to_the_primary(
    app_and_client, clusters, clock: Clock
) -> None:
    database, client = app_and_client
    retry_s = database.settings.replica_retry_s
    primary, standby = clusters
    created = await client.post("/users", json={"name": "F", "email": "f@replica.example.com"})
    wait_replayed(primary.url, standby.url)
    user_id = created.json()["id"]
    assert (await client.get(f"/users/{user_id}")).status_code == 200  # a pooled replica connection

    standby.stop()
    try:
        ready = await client.get("/health/ready")
        assert ready.status_code == 200, ready.text  # the primary serves reads meanwhile
        assert ready.json()["status"] == "degraded"
        assert ready.json()["checks"]["replica"]["status"] == "failing"

        codes = [(await client.get(f"/users/{user_id}")).status_code for _ in range(4)]
        # The request that finds the replica gone may fail with 503, never 500; the
        # ones after it are served by the primary.
        assert set(codes) <= {200, 503} and codes[-2:] == [200, 200], codes
        assert not await in_recovery(database, read_only=True)
    finally:
        standby.start()
    wait_replayed(primary.url, standby.url)
    # Back, but reads stay on the primary for DB_REPLICA_RETRY_S after the failure...
    clock.advance(retry_s * 0.9)
    assert not await in_recovery(database, read_only=True)
    # ...and go to the replica again once it has passed.
    clock.advance(retry_s * 0.2)
    assert await in_recovery(database, read_only=True)
