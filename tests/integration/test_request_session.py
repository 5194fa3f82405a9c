"""The request session: commit before the response, rollback on error, failed commit → 4xx/5xx."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from fastapi_dbpool import DatabaseSettings
from fastapi_dbpool.testing import assert_pool_idle
from tests.integration.sessionapp import build_app, create_tables, drop_tables


@pytest.fixture
def tables(settings: DatabaseSettings) -> Iterator[None]:
    create_tables(settings)
    yield
    drop_tables(settings)


@pytest.fixture
def observations() -> list[dict[str, Any]]:
    return []


@pytest.fixture
async def session_app(
    settings: DatabaseSettings, tables: None, observations: list[dict[str, Any]]
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = build_app(settings, observations)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield app, client
        await assert_pool_idle(app.state.fastapi_dbpool)
    gc.collect()


async def test_commit_happens_before_the_response_starts(session_app, observations) -> None:
    _, client = session_app
    response = await client.post("/parents")
    assert response.status_code == 201
    # When the status line was about to be sent, another session already saw the row
    # and the request's connection was already back in the pool.
    assert observations == [{"parents": 1, "checked_out": 0}]


async def test_http_exception_rolls_back(session_app, observations) -> None:
    _, client = session_app
    assert (await client.post("/parents/then-http-error")).status_code == 404
    assert (await client.get("/parents/count")).json() == 0


async def test_unhandled_error_rolls_back(session_app) -> None:
    _, client = session_app
    assert (await client.post("/parents/then-crash")).status_code == 500
    assert (await client.get("/parents/count")).json() == 0


async def test_failed_commit_is_never_a_2xx(session_app, observations) -> None:
    _, client = session_app
    response = await client.post("/children/424242")
    # The flush passed; COMMIT failed on the deferred foreign key. The client must not
    # get 201 for a row that is not there.
    assert response.status_code == 409
    assert response.json()["reason"] == "conflict"
    assert (await client.get("/parents/count")).json() == 0
    ok = await client.post("/parents")
    child = await client.post(f"/children/{ok.json()['id']}")
    assert child.status_code == 201


async def test_background_session_commits_after_response(session_app) -> None:
    _, client = session_app
    assert (await client.post("/background")).status_code == 202
    # ASGITransport runs background tasks before returning the response.
    assert (await client.get("/parents/count")).json() == 1


async def test_concurrent_requests_each_get_their_own_session(session_app) -> None:
    _, client = session_app
    responses = await asyncio.gather(*(client.post("/parents/slow") for _ in range(12)))
    assert [r.status_code for r in responses] == [201] * 12
    assert len({r.json()["id"] for r in responses}) == 12
    assert (await client.get("/parents/count")).json() == 12
