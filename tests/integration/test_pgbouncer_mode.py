"""DB_PGBOUNCER: PostgreSQL behind a real PgBouncer in transaction pooling mode.

In transaction mode each transaction may run on a different server connection. The
library then sets ``statement_timeout`` with ``SET LOCAL`` in each transaction (a
startup parameter is refused), gives prepared statements unique names and caches none,
so that many requests never meet "prepared statement already exists" or "does not
exist", and drops a direct connection that asyncpg left mid-query, which PgBouncer
would otherwise keep tied to a server connection.
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest
from sqlalchemy import Integer, bindparam, literal, select

from fastapi_dbpool import Database
from tests.conftest import make_settings
from tests.integration.test_statement_timeout import (
    DEADLINE_MS,
    SLOW_PATHS,
    assert_deadline_enforced,
    assert_same_connection_serves,
)
from tests.pgbouncer import SERVER_POOL_SIZE, PgBouncer, pgbouncer
from tests.pressure_app import create_app, started

__all__ = ["pgbouncer"]  # the fixture, imported for this module's tests


@pytest.mark.postgres_only
@pytest.mark.timing
@pytest.mark.parametrize("path", SLOW_PATHS)
async def test_statement_timeout_behind_pgbouncer(
    database_url: str, pgbouncer: PgBouncer, backend: str, path: str
) -> None:
    settings = make_settings(
        pgbouncer.url_for(database_url),
        pool_size=1,
        max_overflow=0,
        statement_timeout_ms=DEADLINE_MS,
        pgbouncer=True,
    )
    app = create_app(settings)
    async with started(app) as client:
        await assert_deadline_enforced(client, path)
        await assert_same_connection_serves(client, app, path)


@pytest.mark.postgres_only
async def test_startup_parameter_refused_by_pgbouncer_is_503(
    database_url: str, pgbouncer: PgBouncer, backend: str
) -> None:
    """Why DB_PGBOUNCER exists: PgBouncer refuses statement_timeout as a startup parameter.

    Without the setting the app cannot connect; the answer is still a 503, not a 500.
    """
    settings = make_settings(
        pgbouncer.url_for(database_url), pool_size=1, statement_timeout_ms=DEADLINE_MS
    )
    app = create_app(settings)
    async with started(app) as client:
        response = await client.get("/quick")
    assert response.status_code == 503, response.text
    assert response.json()["reason"] == "database_unavailable"
    assert "unsupported startup parameter: statement_timeout" in pgbouncer.log()


@pytest.mark.postgres_only
@pytest.mark.slow
async def test_many_requests_through_pgbouncer(
    database_url: str, pgbouncer: PgBouncer, backend: str
) -> None:
    """users_api through PgBouncer (transaction mode, 3 server connections for 10 clients)."""
    from users_api.main import create_app as create_users_api

    settings = make_settings(
        pgbouncer.url_for(database_url),
        pool_size=10,
        max_overflow=0,
        statement_timeout_ms=5000,
        pgbouncer=True,
    )
    app = create_users_api(settings)
    rng = random.Random(7)
    statuses: list[tuple[int, str]] = []
    async with started(app) as client:
        ids = []
        for n in range(10):
            created = await client.post("/users", json={"name": "P", "email": f"p{n}@x.com"})
            assert created.status_code == 201, created.text
            ids.append(created.json()["id"])

        async def worker(w: int) -> None:
            for n in range(30):
                user = rng.choice(ids)
                roll = rng.random()
                if roll < 0.4:
                    response = await client.get(f"/users/{user}")
                elif roll < 0.6:
                    response = await client.get("/users", params={"limit": 5})
                elif roll < 0.8:
                    response = await client.patch(f"/users/{user}", json={"name": f"N{w}-{n}"})
                else:
                    body = {"title": f"T{w}-{n}", "owner_id": user}
                    response = await client.post("/items", json=body)
                statuses.append((response.status_code, response.text))

        await asyncio.gather(*(worker(w) for w in range(20)))
    failures = [(status, text) for status, text in statuses if not 200 <= status < 300]
    assert failures == [], failures[:5]
    assert len(statuses) == 600
    assert "prepared statement" not in pgbouncer.log()


@pytest.mark.postgres_only
@pytest.mark.timing
async def test_direct_connection_refused_argument_does_not_stall_pgbouncer(
    database_url: str, pgbouncer: PgBouncer, backend: str
) -> None:
    """An argument asyncpg cannot encode must not leave a server connection tied up.

    asyncpg has sent Parse/Describe (no Sync) when it refuses the argument; PgBouncer
    keeps that server connection for the client until its next Sync. Unless the
    connection is dropped, a few such errors take every server connection and the
    next requests wait for PgBouncer's query_wait_timeout (120 s).
    """
    settings = make_settings(pgbouncer.url_for(database_url), pool_size=10, pgbouncer=True)
    bad = select(literal(1).label("one"), bindparam("text").label("text"))  # a str column
    good = select(bindparam("n", type_=Integer).label("n"))
    async with Database(settings) as database:

        async def refused() -> None:
            async with database.connection(read_only=True) as conn:
                await conn.all(bad, text=12345)  # an int for a text parameter

        results = await asyncio.gather(
            *(refused() for _ in range(3 * SERVER_POOL_SIZE)), return_exceptions=True
        )
        assert all(isinstance(r, Exception) for r in results), results
        started_at = time.perf_counter()

        async def fine(n: int) -> int:
            async with database.connection(read_only=True) as conn:
                return int(await conn.scalar(good, n=n))

        async with asyncio.timeout(10):
            assert await asyncio.gather(*(fine(n) for n in range(20))) == list(range(20))
        assert time.perf_counter() - started_at < 5


@pytest.mark.postgres_only
async def test_many_sync_requests_through_pgbouncer(
    database_url: str, pgbouncer: PgBouncer, backend: str
) -> None:
    """Sync sessions (psycopg 3) prepare nothing on the server behind PgBouncer.

    psycopg prepares a statement once it has run five times on a connection, under a
    name unique to that connection only.
    """
    settings = make_settings(
        pgbouncer.url_for(database_url), pool_size=6, statement_timeout_ms=5000, pgbouncer=True
    )
    app = create_app(settings)
    async with started(app) as client:

        async def worker() -> list[int]:
            return [(await client.get("/slow-sync?seconds=0")).status_code for _ in range(25)]

        statuses = await asyncio.gather(*(worker() for _ in range(8)))
    assert [s for each in statuses for s in each] == [200] * 200
