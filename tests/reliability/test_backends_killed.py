"""Scenario 3: the app's server connections are killed (``pg_terminate_backend``) under load.

What must hold: the kills are seen (some request is answered 503 soon after one), and
every 503 says when to retry (``Retry-After``); no 500; no partial write (no write
answered with a definite failure is stored, every acknowledged one is, creates and
renames alike); a broken connection is never handed to a second request, so each kill
fails at most the one request that was using that connection; the pool refills:
afterwards the app has server connections again and serves only 2xx.

Figures: ``.venv/bin/pytest tests/reliability/test_backends_killed.py -s``
(``RELIABILITY_FULL=1`` for the full run).
"""

from __future__ import annotations

import asyncio

import httpx
import psycopg
import pytest

from tests.backends import libpq_url
from tests.pgcluster import PgCluster
from tests.pgstat import app_sessions
from tests.reliability.conftest import base_env, scaled
from tests.reliability.faults import failed_during
from tests.reliability.ledger import Load, seed_users
from tests.servers import USERS_API, uvicorn_server

pytestmark = [pytest.mark.postgres_only, pytest.mark.slow]

KILL = (
    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
    "WHERE datname = %s AND application_name = 'fastapi_dbpool:primary'"
)


def kill_app_backends(database_url: str) -> int:
    """Terminate every server session of the app; return how many there were."""
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        (killed,) = conn.execute(KILL, (database_url.rsplit("/", 1)[1],)).fetchone() or (0,)
    return int(killed)


async def test_killed_backends_never_give_500(pg_cluster: PgCluster, app_database: str) -> None:
    rounds = int(scaled(5, 60))
    interval_s = scaled(0.5, 1.5)
    killed = 0
    kills: list[tuple[float, float]] = []
    with uvicorn_server(USERS_API, base_env(app_database), access_log=False) as server:
        user_ids = await asyncio.to_thread(seed_users, server.url, 20)
        load = Load(server.url, user_ids, clients=20, timeout=30)
        run = asyncio.create_task(load.run(seconds=3600))
        try:
            # A kill is seen only by the requests whose statement was running on a
            # killed connection; most kills find them between two. So the short run
            # kills on, up to 3 x rounds, until one was seen.
            while len(kills) < rounds or (
                not failed_during(load.ledger, kills, deadline=1.0) and len(kills) < 3 * rounds
            ):
                await load.until(requests=len(load.ledger.entries) + 20, timeout=30)
                await asyncio.sleep(interval_s)  # the pace of the kills
                at = load.now()
                killed += await asyncio.to_thread(kill_app_backends, app_database)
                kills.append((at, load.now()))
            await load.until(requests=len(load.ledger.entries) + 100, timeout=30)
        finally:
            load.stop()
            ledger = await run
        # The pool refills: answers are 2xx again, from new server connections.
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            after = [(await client.get(f"/users/{user_ids[0]}")).status_code for _ in range(20)]
            ready = (await client.get("/health/ready")).status_code
        sessions = app_sessions(app_database)
        server.stop()
        log = server.log()
    # A request that met a dead connection fails at once (no pool or connect wait).
    seen = failed_during(ledger, kills, deadline=1.0)
    report = ledger.summary(f"kill x{len(kills)} ({killed} backends): ") + (
        f"; 503 within 1 s of a kill {len(seen)}"
        f"; after: {after.count(200)}/20 reads 200, ready {ready}, {len(sessions)} sessions"
    )
    print("\n" + report)
    assert killed > 0, report
    assert seen, report
    assert ledger.without_retry_after() == [], report
    assert ledger.count(500) == 0, report
    assert ledger.count(None) == 0, report
    assert set(ledger.statuses) <= {200, 201, 503}, report
    # A dead connection fails the request that meets it, and is then thrown away.
    assert ledger.count(503) <= killed, report
    assert ledger.lost_writes(app_database) == [], report
    assert ledger.phantom_writes(app_database) == [], report
    assert after == [200] * 20 and ready == 200, report
    assert len(sessions) >= 1, report
    assert "Traceback" not in log, log[-3000:]
