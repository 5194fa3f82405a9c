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
from fastapi_dbpool.errors import PoolTimeout, classify
from fastapi_dbpool.testing import assert_pool_idle
from tests.backends import libpq_url
from tests.conftest import make_settings
from tests.polling import eventually

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


@pytest.mark.timing
async def test_retry_waits_only_for_what_is_left_of_the_pool_timeout(database_url: str) -> None:
    """A read that waited, found its connection dead and retries: one DB_POOL_TIMEOUT in all.

    B waits 0.6 s for the only connection, which the server killed meanwhile; when B
    throws it away its permit goes to C, queued behind B. B's retry may then wait only
    the 0.4 s left of its 1 s, not a second full second.
    """
    settings = make_settings(database_url, pool_size=1, pool_pre_ping=False, pool_timeout=1.0)
    async with Database(settings) as database:
        holding, release = asyncio.Event(), asyncio.Event()

        async def a() -> None:
            async with database.connection(read_only=True) as db:
                await db.scalar(select(text("1")))
                holding.set()
                await release.wait()

        async def b() -> float:
            started = time.monotonic()
            with pytest.raises(PoolTimeout):
                async with database.connection(read_only=True) as db:
                    await db.scalar(select(text("1")))
            return time.monotonic() - started

        async def c() -> None:
            async with database.connection(read_only=True) as db:
                await db.scalar(select(text("1")))
                await asyncio.sleep(2)

        holder = asyncio.create_task(a())
        await holding.wait()
        b_started = time.monotonic()
        reader = asyncio.create_task(b())
        waiting = lambda n: database.pool_snapshot().waiting == n  # noqa: E731
        await eventually(lambda: waiting(1), what="B queued")
        queued = asyncio.create_task(c())
        await eventually(lambda: waiting(2), what="C queued behind B")
        # Let B spend 0.6 s of its 1 s waiting: the point of the test is time passing.
        await asyncio.sleep(max(0.0, 0.6 - (time.monotonic() - b_started)))
        kill_sessions_and_wait(database_url)
        release.set()
        elapsed = await reader
        await asyncio.gather(holder, queued)
        assert 0.9 <= elapsed <= 1.35, f"B answered after {elapsed:.2f} s"
        await assert_pool_idle(database)
