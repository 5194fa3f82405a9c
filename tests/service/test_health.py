"""/health/live and /health/ready: what they check, and what their reasons never say."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from fastapi_dbpool import Database, DatabaseSettings, health_router
from fastapi_dbpool.testing import assert_pool_idle
from tests.backends import settle_sqlite_threads
from tests.conftest import make_settings
from tests.polling import eventually
from tests.servers import free_port

CANARY = "Canary-Pw-5521"
PROBE_TIMEOUT = 0.3


@asynccontextmanager
async def health_app(
    settings: DatabaseSettings,
) -> AsyncIterator[tuple[httpx.AsyncClient, Database]]:
    """A bare app with a Database and the health routes, probe timeout 0.3 s."""
    app = FastAPI()
    database = Database(settings)
    database.install(app)
    app.include_router(health_router(probe_timeout=PROBE_TIMEOUT))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client, database
        await assert_pool_idle(database)
    await settle_sqlite_threads()


def unreachable_url(backend: str, tmp_path: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path}/no-such-directory/app.db"
    return f"postgresql://canary_user:{CANARY}@127.0.0.1:{free_port()}/canary_db"


def assert_discreet(body: str, tmp_path: Path) -> None:
    for secret in (CANARY, "canary_user", "canary_db", "127.0.0.1", str(tmp_path), "Error"):
        assert secret not in body, f"{secret!r} in {body}"


async def test_ready_lists_its_checks(client: httpx.AsyncClient) -> None:
    response = await client.get("/health/ready")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "checks": {
            "database": {"ok": True, "status": "ok"},
            "pool": {"ok": True, "status": "ok"},
            # users_api has a def endpoint (GET /users/{id}/sync): its pool is checked too.
            "sync_pool": {"ok": True, "status": "ok"},
        },
    }


async def test_live_does_not_touch_the_database(backend: str, tmp_path: Path) -> None:
    async with health_app(DatabaseSettings(url=unreachable_url(backend, tmp_path))) as (client, db):
        response = await client.get("/health/live")
        assert response.status_code == 200
        assert response.json() == {"status": "ok", "checks": {}}
        assert db.pool_snapshot().connects_total == 0


async def test_ready_when_the_database_is_unreachable(
    backend: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with health_app(DatabaseSettings(url=unreachable_url(backend, tmp_path))) as (client, _):
        response = await client.get("/health/ready")
    assert response.status_code == 503
    assert response.json()["status"] == "failing"
    assert response.json()["checks"]["database"] == {
        "ok": False,
        "reason": "unreachable",
        "status": "failing",
    }
    assert response.json()["checks"]["pool"]["status"] == "ok"
    assert_discreet(response.text, tmp_path)
    (record,) = [r for r in caplog.records if getattr(r, "event", None) == "probe_failed"]
    assert CANARY not in record.getMessage()


@pytest.mark.postgres_only
async def test_ready_when_the_database_does_not_answer(backend: str, tmp_path: Path) -> None:
    """A server that accepts connections and says nothing (a hung host, a full backlog)."""
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    url = f"postgresql://canary_user:{CANARY}@127.0.0.1:{port}/canary_db"
    try:
        async with health_app(DatabaseSettings(url=url)) as (client, _):
            started = time.monotonic()
            response = await client.get("/health/ready")
            elapsed = time.monotonic() - started
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()
    assert response.status_code == 503
    assert (
        response.json()["checks"]["database"]["reason"] == f"no answer within {PROBE_TIMEOUT:g} s"
    )
    assert accepted, "the probe never connected"
    assert elapsed < 3, f"the probe took {elapsed:.1f} s despite its {PROBE_TIMEOUT} s timeout"
    assert_discreet(response.text, tmp_path)


async def test_ready_when_the_pool_is_exhausted(database_url: str) -> None:
    settings = make_settings(database_url, pool_size=1, max_overflow=0, pool_timeout=2)
    async with health_app(settings) as (client, database):
        async with database.engine.connect() as held:
            await held.execute(text("SELECT 1"))

            async def wait_for_a_connection() -> None:
                # A reader: on SQLite a writer would queue for the write gate (held by
                # the connection above) before it asks the pool for a connection.
                async with database.session(read_only=True) as session:
                    await session.execute(text("SELECT 1"))

            waiter = asyncio.create_task(wait_for_a_connection())
            await eventually(lambda: database.pool_snapshot().waiting, what="a waiter")
            response = await client.get("/health/ready")
        await waiter
        recovered = await client.get("/health/ready")
    assert response.status_code == 503
    checks = response.json()["checks"]
    # The probe has its own connection: a busy pool is not reported as a dead database.
    assert checks["database"]["status"] == "ok"
    assert checks["pool"] == {
        "ok": False,
        "reason": "exhausted: 1 in use, 1 waiting",
        "status": "failing",
    }
    assert recovered.status_code == 200


async def test_ready_before_start_says_not_started() -> None:
    app = FastAPI()
    Database(DatabaseSettings(url="sqlite:///never-opened.db")).install(app)
    app.include_router(health_router())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/health/ready")
    assert response.status_code == 503
    assert response.json()["checks"]["database"]["reason"] == "not started"
