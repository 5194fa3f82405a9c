"""``Metrics.before_scrape``: app gauges read from the database only when Prometheus asks."""

from __future__ import annotations

import logging

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import Gauge
from sqlalchemy import literal, select

from fastapi_dbpool import Database, DatabaseSettings, SessionDep, install_metrics

TOKEN = "scrape-token"


async def test_refresh_runs_for_each_authorised_scrape_and_no_other_request(
    settings: DatabaseSettings, caplog: pytest.LogCaptureFixture
) -> None:
    app = FastAPI()
    database = Database(settings)
    database.install(app)

    @app.get("/count")
    async def count(session: SessionDep) -> int:
        return 1

    metrics = install_metrics(app, token=TOKEN)
    assert metrics is not None
    gauge = Gauge("app_rows", "Rows, read at scrape time.", registry=metrics.registry)
    calls: list[int] = []

    async def refresh() -> None:
        # Reads through the app's own Database, as an app gauge would.
        async with database.connection(read_only=True) as db:
            value = await db.scalar(select(literal(41) + 1))
        calls.append(value)
        gauge.set(value)

    async def broken() -> None:
        raise RuntimeError("the counts cannot be read")

    metrics.before_scrape(broken)  # logged; the scrape and the next refresh go on
    metrics.before_scrape(refresh)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert (await client.get("/count")).status_code == 200
            assert calls == [], "an ordinary request must not run the refresh"
            assert (await client.get("/metrics")).status_code == 401
            assert calls == [], "a refused scrape must not read the database"
            with caplog.at_level(logging.WARNING, logger="fastapi_dbpool"):
                answer = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
            assert answer.status_code == 200
            assert calls == [42]
            assert "app_rows 42.0" in answer.text
            assert "before-scrape refresh failed" in caplog.text
