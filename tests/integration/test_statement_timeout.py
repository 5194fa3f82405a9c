"""DB_STATEMENT_TIMEOUT_MS: a statement past its deadline is answered 503, and the pool goes on.

On PostgreSQL the server cancels the statement (``statement_timeout``); on SQLite the
connection's progress handler interrupts it. Either way the answer is 503 with reason
``statement_timeout``, never 500, and the same connection serves the next request:
it is not thrown away (no invalidation, no new connection).

Behind PgBouncer in transaction mode (``DB_PGBOUNCER=true``) the timeout is set with
``SET LOCAL`` in each transaction, and prepared statements get unique names, so that
many requests never meet "prepared statement already exists".
"""

from __future__ import annotations

import asyncio
import random
import time

import httpx
import pytest

from tests.conftest import make_settings
from tests.pgbouncer import PgBouncer, pgbouncer
from tests.pressure_app import create_app, started

__all__ = ["pgbouncer"]  # the fixture, imported for this module's tests

DEADLINE_MS = 300


async def assert_deadline_enforced(client: httpx.AsyncClient) -> None:
    """A slow statement is cut at the deadline and answered 503 statement_timeout."""
    started_at = time.perf_counter()
    response = await client.get("/slow?seconds=5")
    elapsed = time.perf_counter() - started_at
    assert response.status_code == 503, response.text
    assert response.json()["reason"] == "statement_timeout"
    assert "took too long" in response.json()["detail"]
    assert "retry-after" in response.headers
    assert DEADLINE_MS / 1000 - 0.05 <= elapsed < 2.5, elapsed


async def assert_same_connection_serves(client: httpx.AsyncClient, app: object) -> None:
    """The next request succeeds on the connection that timed out: nothing replaced."""
    response = await client.get("/quick")
    assert response.status_code == 200, response.text
    snapshot = app.state.fastapi_dbpool.pool_snapshot()  # type: ignore[attr-defined]
    assert snapshot.invalidations_total == 0
    assert snapshot.connects_total == 1


@pytest.mark.timing
async def test_statement_timeout_is_503_and_connection_reusable(database_url: str) -> None:
    settings = make_settings(
        database_url, pool_size=1, max_overflow=0, statement_timeout_ms=DEADLINE_MS
    )
    app = create_app(settings)
    async with started(app) as client:
        await assert_deadline_enforced(client)
        await assert_same_connection_serves(client, app)
        # A statement within the deadline is not affected.
        assert (await client.get("/slow?seconds=0.01")).status_code == 200


@pytest.mark.postgres_only
@pytest.mark.timing
async def test_statement_timeout_behind_pgbouncer(
    database_url: str, pgbouncer: PgBouncer, backend: str
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
        await assert_deadline_enforced(client)
        await assert_same_connection_serves(client, app)


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
