"""DB_LOG_JSON=true: users_api writes its and the library's log records as JSON lines."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import make_settings

LOGGERS = ("fastapi_dbpool", "users_api")


@pytest.fixture
def restore_loggers() -> Iterator[None]:
    saved = {name: logging.getLogger(name) for name in LOGGERS}
    state = {name: (lg.handlers[:], lg.level, lg.propagate) for name, lg in saved.items()}
    yield
    for name, logger in saved.items():
        logger.handlers[:], logger.level, logger.propagate = state[name]


@pytest.mark.usefixtures("restore_loggers")
async def test_json_log_lines(database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    from users_api.main import create_app

    app = create_app(make_settings(database_url, log_json=True, pool_size=4))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert (await client.get("/users")).status_code == 200
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]
    events = {(line["logger"], line.get("event")) for line in lines}
    assert ("fastapi_dbpool", "start") in events
    assert ("fastapi_dbpool", "stop") in events
    start = next(line for line in lines if line.get("event") == "start")
    assert start["pool"] == "primary" and start["level"] == "INFO"
    assert start["pool_size"] == 4 and start["url"].split(":")[0] in (
        "sqlite+aiosqlite",
        "postgresql+asyncpg",
    )


@pytest.mark.usefixtures("restore_loggers")
async def test_no_logging_set_up_without_it(database_url: str) -> None:
    from users_api.main import create_app

    before = [logging.getLogger(name).handlers[:] for name in LOGGERS]
    create_app(make_settings(database_url))
    assert [logging.getLogger(name).handlers for name in LOGGERS] == before
