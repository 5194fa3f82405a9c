"""The library's routes under an app whose ``generate_unique_id_function`` reads tags.

A common FastAPI shape (the full-stack template's) names operations by their first tag:
every route must have one. /metrics and the /pool dashboard stay out of the schema; the
health routes are in it, tagged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute

from fastapi_dbpool import Database, health_router, install_metrics


def tag_first_id(route: APIRoute) -> str:
    return f"{route.tags[0]}-{route.name}"


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI(generate_unique_id_function=tag_first_id)

    @app.get("/things", tags=["things"])
    async def things() -> list[str]:
        return []

    database = Database(url=database_url)
    database.install(app)
    app.include_router(health_router())
    install_metrics(app, token=None)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


async def test_schema_metrics_and_pool_under_a_tag_reading_id_function(
    client: httpx.AsyncClient,
) -> None:
    schema = await client.get("/openapi.json")
    assert schema.status_code == 200, schema.text
    paths = schema.json()["paths"]
    assert set(paths) == {"/things", "/health/live", "/health/ready"}
    assert paths["/health/ready"]["get"]["operationId"] == "health-ready"
    assert paths["/things"]["get"]["operationId"] == "things-things"

    metrics = await client.get("/metrics")
    assert metrics.status_code == 200
    assert 'dbpool_checkout_wait_seconds_count{pool="primary"}' in metrics.text

    stats = await client.get("/pool/stats")
    assert stats.status_code == 200
    assert (await client.get("/pool")).status_code == 200
    assert (await client.get("/health/ready")).status_code == 200
