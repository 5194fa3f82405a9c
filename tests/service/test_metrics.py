"""/metrics and /pool/stats of users_api on both databases: they follow what the pool does."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from fastapi_dbpool import Database, DatabaseSettings
from fastapi_dbpool.observe.http_metrics import RequestMetricsMiddleware
from fastapi_dbpool.testing import assert_pool_idle
from tests.conftest import make_settings
from tests.polling import eventually

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(body: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of *name*'s samples whose labels include *labels*."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


async def scrape(client: httpx.AsyncClient, **headers: str) -> Samples:
    response = await client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


@asynccontextmanager
async def started(settings: DatabaseSettings) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI]]:
    from users_api.main import create_app

    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client, app
        await assert_pool_idle(app.state.fastapi_dbpool)


async def test_scrape_after_requests(client: httpx.AsyncClient, database: Database) -> None:
    before = await scrape(client)
    user = (await client.post("/users", json={"name": "Ada", "email": "ada@example.com"})).json()
    for _ in range(3):
        assert (await client.get(f"/users/{user['id']}")).status_code == 200
    for missing in (123456, 654321):
        assert (await client.get(f"/users/{missing}")).status_code == 404
    assert (await client.get("/no/such/route/42")).status_code == 404
    await assert_pool_idle(database)
    after = await scrape(client)

    route = "/users/{user_id}"
    assert value(after, "http_requests_total", route=route, status="200", method="GET") == 3
    assert value(after, "http_requests_total", route=route, status="404") == 2
    assert value(after, "http_requests_total", route="/users", method="POST", status="201") == 1
    assert value(after, "http_requests_total", route="<unmatched>", status="404") == 1
    assert value(after, "http_request_duration_seconds_count", route=route) == 5
    routes = {dict(labels).get("route") for (_, labels) in after}
    assert not any(r and any(ch.isdigit() for ch in r) for r in routes), routes

    def grew(name: str) -> float:
        return value(after, name, pool="primary") - value(before, name, pool="primary")

    # Each request above that reached the database checked out at least one connection.
    assert grew("dbpool_checkouts_total") >= 6
    assert grew("dbpool_checkout_wait_seconds_count") >= 6
    assert grew("dbpool_hold_seconds_count") >= 6
    assert grew("dbpool_hold_seconds_sum") > 0
    assert value(after, "dbpool_connects_total", pool="primary") >= 1
    assert value(after, "dbpool_checked_out", pool="primary") == 0
    assert value(after, "dbpool_waiting", pool="primary") == 0
    assert value(after, "dbpool_size", pool="primary") == 5
    assert value(after, "dbpool_timeouts_total", pool="primary") == 0


async def test_waiting_and_timeouts_are_visible(database_url: str) -> None:
    settings = make_settings(database_url, pool_size=1, max_overflow=0, pool_timeout=1)
    async with started(settings) as (client, app):
        database: Database = app.state.fastapi_dbpool
        await start_up_work_done(database)
        async with database.engine.connect() as held:
            await held.execute(text("SELECT 1"))
            waiter = asyncio.create_task(client.get("/users"))
            await eventually(lambda: database.pool_snapshot().waiting, what="a waiter")
            during = await scrape(client)
            assert value(during, "dbpool_checked_out", pool="primary") == 1
            assert value(during, "dbpool_waiting", pool="primary") == 1
            response = await waiter
            assert response.status_code == 503
        after = await scrape(client)
        assert value(after, "dbpool_timeouts_total", pool="primary") == 1
        assert value(after, "dbpool_waiting", pool="primary") == 0
        await assert_pool_idle(database)
        assert value(await scrape(client), "dbpool_checked_out", pool="primary") == 0
        assert value(after, "http_requests_total", route="/users", status="503") == 1


async def start_up_work_done(database: Database) -> None:
    """Wait for users_api's start-up task (resuming stranded items) to return its connection."""
    await eventually(lambda: database.pool_snapshot().checkouts_total, what="start-up work")
    await assert_pool_idle(database)


def basic(token: str) -> str:
    return "Basic " + base64.b64encode(f"anyone:{token}".encode()).decode()


@pytest.mark.parametrize("path", ["/metrics", "/pool", "/pool/stats", "/pool/dashboard.js"])
async def test_token_protects_metrics_and_dashboard(
    database_url: str, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = "t0ken-for-tests"
    monkeypatch.setenv("DB_METRICS_TOKEN", token)
    async with started(make_settings(database_url)) as (client, _):
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": f"Bearer {token}x"},
            {"Authorization": token},
            {"Authorization": basic("wrong")},
        ):
            response = await client.get(path, headers=headers)
            assert response.status_code == 401, (headers, response.status_code)
            assert token not in response.text
            challenge = response.headers["www-authenticate"]
            assert challenge.startswith("Bearer" if path == "/metrics" else "Basic")
        for good in (f"Bearer {token}", basic(token)):
            response = await client.get(path, headers={"Authorization": good})
            assert response.status_code == 200, response.text
        # The rest of the app does not ask for it.
        assert (await client.get("/users")).status_code == 200


async def test_metrics_off_installs_nothing(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DB_METRICS", "false")
    async with started(make_settings(database_url)) as (client, app):
        database: Database = app.state.fastapi_dbpool
        for path in ("/metrics", "/pool", "/pool/stats"):
            assert (await client.get(path)).status_code == 404
        assert (await client.get("/users")).status_code == 200
        assert not any(m.cls is RequestMetricsMiddleware for m in app.user_middleware)
        # No observer on the pool's hot path.
        assert database.monitor._wait_observers == []
        assert database.monitor._hold_observers == []


async def test_pool_stats_follow_the_requests(
    client: httpx.AsyncClient, database: Database
) -> None:
    user = (await client.post("/users", json={"name": "Bo", "email": "bo@example.com"})).json()
    for _ in range(10):
        await client.get(f"/users/{user['id']}")
    await assert_pool_idle(database)
    # The sampler closes a second at each whole second of the clock.
    for _ in range(40):
        stats = (await client.get("/pool/stats")).json()
        series = stats["pools"][0]["series"]
        if sum(series["hold_count"]) >= 11:
            break
        await asyncio.sleep(0.1)
    # Every pool is listed (primary, primary-sync, primary-probe); the requests used the first.
    pool = stats["pools"][0]
    assert pool["name"] == "primary"
    assert (pool["size"], pool["max_overflow"], pool["capacity"]) == (5, 0, 5)
    assert pool["now"]["checked_out"] == 0
    assert pool["now"]["checkouts_total"] >= 11
    assert sum(series["checkouts"]) >= 11
    assert sum(series["wait_count"]) >= 11
    assert sum(series["hold_count"]) >= 11
    assert any(ms is not None and ms > 0 for ms in series["hold_max_ms"])
    assert len({len(column) for column in series.values()}) == 1
    assert series["t"] == sorted(set(series["t"])), "one point a second, in order"


async def test_dashboard_page_and_assets(client: httpx.AsyncClient) -> None:
    page = await client.get("/pool")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert '<script src="/pool/dashboard.js"' in page.text
    assert 'data-base="/pool"' in page.text
    assert "http://" not in page.text and "https://" not in page.text
    for name, media in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
        response = await client.get(f"/pool/{name}")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith(media)
        assert "http://" not in response.text and "https://" not in response.text
    assert (await client.get("/pool/secrets.py")).status_code == 404
    assert (await client.get("/pool/../settings.py")).status_code == 404


async def test_dashboard_behind_a_root_path(app: FastAPI) -> None:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, root_path="/api")
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            page = await client.get("/api/pool")
    assert 'data-base="/api/pool"' in page.text
    assert '<script src="/api/pool/dashboard.js"' in page.text
