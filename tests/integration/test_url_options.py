"""DATABASE_URL query options reach both drivers: asyncpg for async sessions, psycopg for sync.

The URL names asyncpg's options (``ssl``, ``command_timeout``, its statement cache);
sync sessions, ``database.sync`` and Alembic connect with psycopg, which gets them in
libpq's spelling (``sslmode``) or not at all.
"""

from __future__ import annotations

import anyio.to_thread
import pytest
from sqlalchemy import text

from fastapi_dbpool import Database
from tests.backends import alembic

# libpq's sslmode (asyncpg's ssl), asyncpg's own deadline and cache options.
OPTIONS = "sslmode=disable&command_timeout=30&statement_cache_size=10&timeout=3"


@pytest.mark.postgres_only
async def test_async_and_sync_sessions_open_with_driver_options(
    database_url: str, backend: str
) -> None:
    database = Database(url=f"{database_url}?{OPTIONS}")
    async with database:
        async with database.session() as session:
            assert await session.scalar(text("SELECT 1")) == 1

        def sync_select() -> int:
            with database.sync.session() as session:
                return int(session.scalar(text("SELECT 1")))

        assert await anyio.to_thread.run_sync(sync_select) == 1


@pytest.mark.postgres_only
def test_alembic_connects_with_driver_options(database_url: str, backend: str) -> None:
    result = alembic(f"{database_url}?{OPTIONS}", "current")
    assert result.returncode == 0, result.stderr[-2000:]
