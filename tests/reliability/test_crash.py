"""Scenario 2: the database crashes (``pg_ctl stop -m immediate``) in the middle of writes.

What must hold: the crash is seen (some request fails during it, 503 or no answer);
no acknowledged write is lost, creates and renames alike (a user's final name is its
last acknowledged rename or a later one of unknown outcome); writes whose outcome is
unknown (the connection died while the statement or its COMMIT was in flight) are
counted and reported, and were never answered 2xx; no write answered with a definite
failure is stored; every 503 says when to retry (``Retry-After``); no 500.

Figures: ``.venv/bin/pytest tests/reliability/test_crash.py -s``
(``RELIABILITY_FULL=1`` for the full run).
"""

from __future__ import annotations

import asyncio

import pytest

from tests.pgcluster import PgCluster
from tests.reliability.conftest import CONNECT_TIMEOUT_S, MARGIN_S, POOL_TIMEOUT_S, base_env, scaled
from tests.reliability.faults import failed_during
from tests.reliability.ledger import Load, seed_users
from tests.servers import USERS_API, uvicorn_server

pytestmark = [pytest.mark.postgres_only, pytest.mark.slow]

# Mostly writes: creates and renames, each one statement committed on its own.
WRITES = {"create_user": 6, "rename_user": 3, "get_user": 1}


async def test_crash_mid_write_loses_no_acknowledged_write(
    pg_cluster: PgCluster, app_database: str
) -> None:
    crashes = int(scaled(2, 10))
    clients = 30
    outages: list[tuple[float, float]] = []
    with uvicorn_server(USERS_API, base_env(app_database), access_log=False) as server:
        # A user or more per client: each renames only its own (see ledger.Load).
        user_ids = await asyncio.to_thread(seed_users, server.url, clients)
        load = Load(server.url, user_ids, clients=clients, mix=WRITES, timeout=30)
        run = asyncio.create_task(load.run(seconds=3600))
        try:
            for _ in range(crashes):
                # Crash while writes are in flight: after a few hundred have been answered.
                await load.until(
                    requests=len(load.ledger.entries) + int(scaled(150, 300)), timeout=60
                )
                down = load.now()
                await asyncio.to_thread(pg_cluster.stop, "immediate")
                await asyncio.to_thread(pg_cluster.start)  # crash recovery, then accepting
                outages.append((down, load.now()))
            await load.until(requests=len(load.ledger.entries) + 100, timeout=60)
        finally:
            load.stop()
            ledger = await run
        server.stop()
        log = server.log()
    lost = ledger.lost_writes(app_database)
    phantom = ledger.phantom_writes(app_database)
    unknown = [e for e in ledger.unknown if e.op == "create_user"]
    stored_unknown = ledger.unknown_stored(app_database)
    deadline = POOL_TIMEOUT_S + CONNECT_TIMEOUT_S + MARGIN_S
    seen = failed_during(ledger, outages, deadline)
    report = ledger.summary(f"crash x{crashes}: ") + (
        f"; acknowledged writes lost {len(lost)}; unknown creates {len(unknown)} "
        f"(stored {stored_unknown}, not stored {len(unknown) - stored_unknown}); "
        f"failed-but-stored {len(phantom)}; failed during the crashes {len(seen)}"
    )
    print("\n" + report)
    # The crashes were seen: or the run proved nothing about them.
    assert seen, report
    assert ledger.without_retry_after() == [], report
    assert ledger.count(500) == 0, report
    assert lost == [], f"{report}\n{lost[:5]}"
    assert phantom == [], f"{report}\n{phantom[:5]}"
    assert set(ledger.statuses) <= {200, 201, 503}, report
    assert ledger.slowest() <= deadline, report
    assert "Traceback" not in log, log[-3000:]
