"""Quiet by default: a normal start, some work and a stop log nothing at INFO."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import text

from fastapi_dbpool import Database
from fastapi_dbpool.errors import SettingsError
from tests.conftest import make_settings


async def test_start_work_and_stop_log_nothing_at_info(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # As an app that calls logging.basicConfig(level=INFO) would have it.
    caplog.set_level(logging.INFO)
    database = Database(make_settings(database_url, pool_size=3))
    async with database:
        async with database.session() as session:
            await session.execute(text("SELECT 1"))
        unit = await database.sync.begin(read_only=True)
        await unit.end(None)
        if database._budget_check is not None:
            await database._budget_check  # the start-up check has its say, if any
    noisy = [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.levelno == logging.INFO and r.name.split(".")[0] in ("fastapi_dbpool", "sqlalchemy")
    ]
    assert noisy == []


async def test_database_takes_its_url_directly(database_url: str) -> None:
    async with Database(url=database_url) as database:
        async with database.session(read_only=True) as session:
            assert await session.scalar(text("SELECT 1")) == 1
        assert (
            database.settings.sqlalchemy_url.database
            == make_settings(database_url).sqlalchemy_url.database
        )


def test_settings_and_url_together_are_refused(database_url: str) -> None:
    with pytest.raises(TypeError, match="either settings or url"):
        Database(make_settings(database_url), url=database_url)


def test_no_url_anywhere_is_a_settings_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    with pytest.raises(SettingsError, match="DATABASE_URL is not set"):
        Database()
