"""The sync pool pings like the async one: only connections idle past DB_POOL_PRE_PING_IDLE_S."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg

from fastapi_dbpool import Database
from tests.conftest import make_settings


@pytest.mark.postgres_only
@pytest.mark.parametrize(("idle_s", "pings"), [(60.0, 0), (0.0, 6)])
async def test_sync_checkouts_ping_only_idle_connections(
    database_url: str, monkeypatch: pytest.MonkeyPatch, idle_s: float, pings: int
) -> None:
    calls: list[Any] = []
    monkeypatch.setattr(PGDialect_psycopg, "do_ping", lambda self, conn: calls.append(conn))
    database = Database(make_settings(database_url, pool_size=1, pool_pre_ping_idle_s=idle_s))
    async with database:
        for _ in range(6):
            unit = await database.sync.begin(read_only=True)
            await unit.end(None)
    # One connection, reused by each checkout a moment after it came back: with a 60 s
    # window it is never pinged; with 0 (ping every checkout) it is pinged six times.
    # SQLAlchemy's own pool_pre_ping, used before, pinged on every checkout whatever the
    # setting said.
    assert len(calls) == pings
