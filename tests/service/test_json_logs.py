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
async def test_json_log_lines(
    database_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from users_api.main import create_app

    monkeypatch.setenv("DB_LOG_JSON", "true")
    app = create_app(make_settings(database_url, pool_size=4))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert (await client.get("/users")).status_code == 200
        # What the library logs when something needs attention, through the app's handler.
        logging.getLogger("fastapi_dbpool.test").warning(
            "pool %s is busy", "primary", extra={"pool": "primary", "event": "busy"}
        )
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]
    busy = next(line for line in lines if line.get("event") == "busy")
    assert busy["logger"] == "fastapi_dbpool.test" and busy["level"] == "WARNING"
    assert busy["pool"] == "primary" and busy["message"] == "pool primary is busy"
    # Quiet by default: a normal start and stop logs nothing at INFO.
    assert [line for line in lines if line["level"] == "INFO"] == []


@pytest.mark.usefixtures("restore_loggers")
async def test_no_logging_set_up_without_it(database_url: str) -> None:
    from users_api.main import create_app

    before = [logging.getLogger(name).handlers[:] for name in LOGGERS]
    create_app(make_settings(database_url))
    assert [logging.getLogger(name).handlers for name in LOGGERS] == before
