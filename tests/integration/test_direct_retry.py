"""A direct read whose pooled connections are all dead: one retry, then a 503, never a 500.

A direct read that finds its pooled connection dead runs once more on another one. When
the server killed every backend at once (``pg_terminate_backend``, a restart), the next
pooled connection is dead too; its error must come out translated (a SQLAlchemy
``DBAPIError`` with ``connection_invalidated``, answered 503), not as the driver's raw
``ConnectionDoesNotExistError``, which the app would answer 500.
"""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from fastapi_dbpool import Database
from fastapi_dbpool.errors import classify
from fastapi_dbpool.testing import assert_pool_idle
from tests.backends import libpq_url
from tests.conftest import make_settings

pytestmark = pytest.mark.postgres_only


def kill_sessions_and_wait(url: str) -> None:
    """Terminate the app's sessions on *url*'s database and wait until they are gone.

    Blocking on purpose: the event loop must not run meanwhile, so the driver has not
    yet noticed that its sockets were closed, as when the kill races a request.
    """
    database = make_url(url).database
    query = (
        "FROM pg_stat_activity WHERE datname = %s AND application_name = 'fastapi_dbpool:primary'"
    )
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute(f"SELECT pg_terminate_backend(pid) {query}", (database,))  # type: ignore[arg-type]
        deadline = time.monotonic() + 10
        while conn.execute(f"SELECT count(*) {query}", (database,)).fetchone() != (0,):  # type: ignore[arg-type]
            assert time.monotonic() < deadline, "backends still there after 10 s"
            time.sleep(0.02)


async def test_retry_on_a_second_dead_connection_is_translated(
    backend: str, database_url: str
) -> None:
    # No pre-ping: the dead connections are handed out as they are.
    settings = make_settings(database_url, pool_size=2, pool_pre_ping=False)
    async with Database(settings) as database:

        async def hold() -> None:
            async with database.connection(read_only=True) as db:
                await db.scalar(select(text("1")))
                await asyncio.sleep(0.05)  # both connections out at once

        await asyncio.gather(hold(), hold())
        kill_sessions_and_wait(database_url)
        with pytest.raises(DBAPIError) as caught:
            async with database.connection(read_only=True) as db:
                await db.scalar(select(text("1")))
        assert caught.value.connection_invalidated
        failure = classify(caught.value)
        assert failure is not None and failure.status == 503
        # Both dead connections were thrown away; the next read gets a fresh one.
        async with database.connection(read_only=True) as db:
            assert await db.scalar(select(text("1"))) == 1
        await assert_pool_idle(database)
