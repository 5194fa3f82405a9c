"""Every pool an app uses is reported: metrics, dashboard, readiness, budget, test helpers."""

# No `from __future__ import annotations`: FastAPI must resolve the endpoints' annotations.
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from fastapi_dbpool import Database, SyncReadSessionDep, health_router, install_metrics
from fastapi_dbpool.testing import assert_pool_idle, wait_pool_idle
from tests.conftest import make_settings


def read_one(session: SyncReadSessionDep) -> dict[str, int]:
    return {"one": session.scalar(text("SELECT 1")) or 0}


def build_app(database_url: str) -> FastAPI:
    app = FastAPI()
    Database(make_settings(database_url, pool_size=3, max_overflow=0)).install(app)
    inner = APIRouter()
    inner.add_api_route("/one", read_one)
    outer = APIRouter(prefix="/sync")
    outer.include_router(inner)
    app.include_router(outer)
    app.include_router(health_router())
    install_metrics(app, token=None)
    return app


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    app = build_app(database_url)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client
        await assert_pool_idle(app.state.fastapi_dbpool)


def samples(exposition: str, metric: str) -> dict[str, float]:
    found = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == metric:
                found[sample.labels["pool"]] = sample.value
    return found


async def test_sync_and_probe_pools_appear_in_metrics(client: httpx.AsyncClient) -> None:
    for _ in range(3):
        assert (await client.get("/sync/one")).json() == {"one": 1}
    assert (await client.get("/health/ready")).status_code == 200
    exposition = (await client.get("/metrics")).text
    checkouts = samples(exposition, "dbpool_checkouts_total")
    assert checkouts["primary-sync"] == 3
    assert checkouts["primary-probe"] >= 1
    assert samples(exposition, "dbpool_size")["primary-sync"] == 3
    waits = samples(exposition, "dbpool_checkout_wait_seconds_count")
    assert waits["primary-sync"] == 3


async def test_sync_pool_appears_on_the_dashboard(client: httpx.AsyncClient) -> None:
    await client.get("/sync/one")
    stats = (await client.get("/pool/stats")).json()
    names = [pool["name"] for pool in stats["pools"]]
    assert {"primary", "primary-sync", "primary-probe"} <= set(names)


async def test_readiness_checks_the_sync_pool_of_an_app_with_sync_endpoints(
    client: httpx.AsyncClient,
) -> None:
    # The routes take sync sessions, so the pool is checked from the start, before any
    # request used it (a failing sync pool must not wait for the first sync request).
    before = (await client.get("/health/ready")).json()["checks"]
    assert before["sync_pool"]["status"] == "ok"
    await client.get("/sync/one")
    after = (await client.get("/health/ready")).json()["checks"]
    assert after["sync_pool"]["status"] == "ok"


async def test_readiness_leaves_out_the_sync_pool_of_an_async_only_app(database_url: str) -> None:
    app = FastAPI()
    Database(make_settings(database_url, pool_size=3, max_overflow=0)).install(app)
    app.include_router(health_router())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            checks = (await client.get("/health/ready")).json()["checks"]
    assert set(checks) == {"database", "pool"}, checks


async def test_the_test_helper_counts_a_leaked_sync_connection(database_url: str) -> None:
    database = Database(make_settings(database_url, pool_size=2))
    async with database:
        unit = await database.sync.begin(read_only=True)
        assert await wait_pool_idle(database, timeout=0.2) == 1
        await unit.end(None)
        assert await wait_pool_idle(database, timeout=5) == 0
