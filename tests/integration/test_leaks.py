"""DB_LEAK_THRESHOLD_S: one warning per connection held too long, naming where and by whom."""

# No `from __future__ import annotations`: FastAPI resolves these endpoints' annotations.
import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from sqlalchemy import text

from fastapi_dbpool import Database, DatabaseDep, SessionDep, SyncReadSessionDep
from fastapi_dbpool.testing import assert_pool_idle
from tests.conftest import make_settings
from tests.polling import eventually

THRESHOLD_S = 0.2
HOLD_S = 0.7  # over three thresholds: still one warning
TESTS = str(Path(__file__).resolve().parent.parent)
SOURCE = Path(__file__).read_text().splitlines()


async def hold_async(seconds: float, session: SessionDep) -> dict[str, str]:
    await session.execute(text("SELECT 1"))
    await asyncio.sleep(seconds)
    return {"status": "done"}


def hold_sync(seconds: float, session: SyncReadSessionDep) -> dict[str, str]:
    session.execute(text("SELECT 1"))
    time.sleep(seconds)
    return {"status": "done"}


async def hold_until_reported(session: SessionDep, database: DatabaseDep) -> dict[str, str]:
    await session.execute(text("SELECT 1"))
    await eventually(lambda: database.pool_snapshot().leaks_total >= 1, what="a leak reported")
    return {"status": "done"}


def hold_engine(seconds: float, database: DatabaseDep) -> dict[str, str]:
    with database.sync.engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        time.sleep(seconds)
    return {"status": "done"}


@asynccontextmanager
async def serve(database_url: str, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    Database(make_settings(database_url, pool_size=3, **overrides)).install(app)
    router = APIRouter()
    router.add_api_route("/hold-async", hold_async)
    router.add_api_route("/hold-sync/{label}", hold_sync)
    router.add_api_route("/hold-engine", hold_engine)
    router.add_api_route("/hold-until-reported", hold_until_reported)
    app.include_router(router)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client
        await assert_pool_idle(app.state.fastapi_dbpool)


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == name]


@pytest.fixture(autouse=True)
def _capture(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fastapi_dbpool")


@pytest.mark.timing
async def test_async_checkout_held_too_long_is_reported_once(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with serve(database_url, leak_threshold_s=THRESHOLD_S) as client:
        response = await client.get("/hold-async", params={"seconds": HOLD_S})
        assert response.status_code == 200
        database: Database = client._transport.app.state.fastapi_dbpool  # type: ignore[attr-defined]
        assert database.pool_snapshot().leaks_total == 1

    [leak] = events(caplog, "leak_suspected")
    assert leak.levelno == logging.WARNING
    assert leak.pool == "primary"  # type: ignore[attr-defined]
    assert leak.endpoint == "GET /hold-async"  # type: ignore[attr-defined]
    assert THRESHOLD_S <= leak.held_seconds < HOLD_S  # type: ignore[attr-defined]
    where: list[str] = leak.checked_out_at  # type: ignore[attr-defined]
    # The innermost application frame is the handler's query; nothing from libraries.
    assert where[0].startswith(f'File "{__file__}"') and where[0].endswith("in hold_async")
    assert all(line.startswith(f'File "{TESTS}') for line in where), where
    assert "hold_async" in leak.getMessage() and "GET /hold-async" in leak.getMessage()

    [returned] = events(caplog, "leak_returned")
    assert returned.pool == "primary"  # type: ignore[attr-defined]
    assert returned.held_seconds >= HOLD_S  # type: ignore[attr-defined]
    assert caplog.records.index(leak) < caplog.records.index(returned)


@pytest.mark.timing
async def test_sync_session_held_too_long_is_reported_with_its_endpoint(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with serve(database_url, leak_threshold_s=THRESHOLD_S) as client:
        response = await client.get("/hold-sync/x", params={"seconds": HOLD_S})
        assert response.status_code == 200
        database: Database = client._transport.app.state.fastapi_dbpool  # type: ignore[attr-defined]
        assert database.sync.pool_snapshot().leaks_total == 1
        assert database.pool_snapshot().leaks_total == 0

    [leak] = events(caplog, "leak_suspected")
    assert leak.pool == "primary-sync"  # type: ignore[attr-defined]
    assert leak.endpoint == "GET /hold-sync/{label}"  # type: ignore[attr-defined]
    # The session's connection is taken for the endpoint before it runs: the endpoint
    # is where it was checked out.
    where: list[str] = leak.checked_out_at  # type: ignore[attr-defined]
    assert len(where) == 1 and where[0].endswith("in hold_sync"), where
    assert where[0].startswith(f'File "{__file__}"')
    [returned] = events(caplog, "leak_returned")
    assert returned.pool == "primary-sync"  # type: ignore[attr-defined]


@pytest.mark.timing
async def test_sync_engine_checkout_in_a_thread_names_the_line(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with serve(database_url, leak_threshold_s=THRESHOLD_S) as client:
        assert (await client.get("/hold-engine", params={"seconds": HOLD_S})).status_code == 200

    [leak] = events(caplog, "leak_suspected")
    assert leak.pool == "primary-sync"  # type: ignore[attr-defined]
    where: list[str] = leak.checked_out_at  # type: ignore[attr-defined]
    assert where[0].endswith("in hold_engine"), where
    line = int(where[0].split(", line ")[1].split(",")[0])
    assert "connect()" in SOURCE[line - 1]
    assert len(events(caplog, "leak_returned")) == 1


async def test_short_holds_are_not_reported(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with serve(database_url, leak_threshold_s=THRESHOLD_S) as client:
        for _ in range(10):
            assert (await client.get("/hold-async", params={"seconds": 0})).status_code == 200
            assert (await client.get("/hold-sync/x", params={"seconds": 0})).status_code == 200
        # Then one checkout held until the pool reports a leak. Its timer was armed
        # after those of the short holds, so theirs would fire first had their checkins
        # not cancelled them: then more than one leak, or another endpoint's, is
        # reported. No sleep past the threshold needed.
        assert (await client.get("/hold-until-reported")).status_code == 200
        database: Database = client._transport.app.state.fastapi_dbpool  # type: ignore[attr-defined]
        assert database.pool_snapshot().leaks_total == 1
        assert database.sync.pool_snapshot().leaks_total == 0
    [leak] = events(caplog, "leak_suspected")
    assert leak.endpoint == "GET /hold-until-reported"  # type: ignore[attr-defined]


async def test_nothing_is_reported_with_the_threshold_off(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with serve(database_url) as client:
        database: Database = client._transport.app.state.fastapi_dbpool  # type: ignore[attr-defined]
        assert database.settings.leak_threshold_s == 0
        assert (await client.get("/hold-async", params={"seconds": 0.5})).status_code == 200
        assert (await client.get("/hold-sync/x", params={"seconds": 0.5})).status_code == 200
        assert database.pool_snapshot().leaks_total == 0
        assert database.sync.pool_snapshot().leaks_total == 0
        assert database.leak_detector is None and database.sync.leak_detector is None
    assert not events(caplog, "leak_suspected") and not events(caplog, "leak_returned")


def test_threshold_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi_dbpool import DatabaseSettings
    from fastapi_dbpool.errors import SettingsError

    monkeypatch.setenv("DB_LEAK_THRESHOLD_S", "2.5")
    assert DatabaseSettings.from_env(url="sqlite:///./app.db").leak_threshold_s == 2.5
    monkeypatch.setenv("DB_LEAK_THRESHOLD_S", "-1")
    with pytest.raises(SettingsError, match="DB_LEAK_THRESHOLD_S"):
        DatabaseSettings.from_env()
