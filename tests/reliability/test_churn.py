"""Scenario 5: connection churn, every connection replaced after 5 s (``DB_POOL_RECYCLE=5``).

What must hold: under load, no error at all: a connection past its age is closed
when it is returned and a new one opened at the next checkout, which no request notices.

Figures: ``.venv/bin/pytest tests/reliability/test_churn.py -s``
(``RELIABILITY_FULL=1``: 30 s).
"""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from tests.backends import libpq_url
from tests.pgcluster import PgCluster
from tests.reliability.conftest import base_env, scaled
from tests.reliability.ledger import Load, seed_users
from tests.servers import USERS_API, uvicorn_server

pytestmark = [pytest.mark.postgres_only, pytest.mark.slow]

RECYCLE_S = 5


def backends_started(database_url: str) -> set[int]:
    """The pids of the app's server sessions now."""
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s"
            " AND application_name = 'fastapi_dbpool:primary'",
            (database_url.rsplit("/", 1)[1],),
        ).fetchall()
    return {pid for (pid,) in rows}


async def test_recycle_churn_gives_no_error(pg_cluster: PgCluster, app_database: str) -> None:
    seconds = scaled(8, 30)
    env = base_env(app_database, DB_POOL_RECYCLE=str(RECYCLE_S))
    seen: set[int] = set()
    with uvicorn_server(USERS_API, env, access_log=False) as server:
        user_ids = await asyncio.to_thread(seed_users, server.url, 20)
        load = Load(server.url, user_ids, clients=20, timeout=30)
        run = asyncio.create_task(load.run(seconds=seconds))
        while not run.done():
            seen |= await asyncio.to_thread(backends_started, app_database)
            await asyncio.wait([run], timeout=0.5)  # sample twice a second
        ledger = run.result()
        server.stop()
        log = server.log()
    report = ledger.summary(f"recycle every {RECYCLE_S} s: ") + (
        f"; {len(seen)} distinct server connections seen (pool of 5)"
    )
    print("\n" + report)
    assert ledger.entries and all(e.ok for e in ledger.entries), report
    # The connections were replaced: more than one pool's worth over the run.
    assert len(seen) > 5, report
    assert "Traceback" not in log, log[-3000:]
