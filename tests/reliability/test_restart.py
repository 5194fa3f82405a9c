"""Scenario 1: the database restarts in the middle of mixed load.

What must hold: no 500; requests during the outage are answered 503 with
``Retry-After`` within the deadline (pool timeout + connect timeout), none hangs; the
app serves normally within 1 s of the server's return, with no stale-connection error
afterwards; every acknowledged write is in the database.

Figures: ``.venv/bin/pytest tests/reliability/test_restart.py -s``
(``RELIABILITY_FULL=1`` for the full run).
"""

from __future__ import annotations

import asyncio

import pytest

from tests.pgcluster import PgCluster
from tests.reliability.conftest import CONNECT_TIMEOUT_S, MARGIN_S, POOL_TIMEOUT_S, base_env, scaled
from tests.reliability.ledger import Ledger, Load, seed_users
from tests.servers import USERS_API, uvicorn_server

pytestmark = [pytest.mark.postgres_only, pytest.mark.slow, pytest.mark.timing]

DEADLINE_S = POOL_TIMEOUT_S + CONNECT_TIMEOUT_S
RECOVERY_S = 1.0


async def restarts_under_load(
    cluster: PgCluster, base_url: str, *, restarts: int, outage_s: float, between_s: float
) -> tuple[Ledger, list[tuple[float, float]]]:
    """Load *base_url* while the server goes down *restarts* times; the ledger and outages."""
    user_ids = await asyncio.to_thread(seed_users, base_url, 20)
    load = Load(base_url, user_ids, clients=20, timeout=DEADLINE_S + 10)
    run = asyncio.create_task(load.run(seconds=3600))
    outages = []
    try:
        for _ in range(restarts):
            await load.until(requests=len(load.ledger.entries) + 200, timeout=between_s * 4)
            await asyncio.sleep(between_s)  # the load's own pace between two outages
            down = load.now()
            await asyncio.to_thread(cluster.stop, "fast")
            await asyncio.sleep(outage_s)  # how long the server stays down
            await asyncio.to_thread(cluster.start)
            outages.append((down, load.now()))
        await asyncio.sleep(between_s)
    finally:
        load.stop()
        ledger = await run
    return ledger, outages


def assert_recovered(ledger: Ledger, outages: list[tuple[float, float]], report: str) -> None:
    """Back to 2xx within RECOVERY_S of each return, and only 2xx after that."""
    for index, (_, up) in enumerate(outages):
        first = ledger.first_ok_after(up)
        assert first is not None and first <= RECOVERY_S, report
        end = outages[index + 1][0] if index + 1 < len(outages) else float("inf")
        after = [e for e in ledger.between(up + RECOVERY_S, end) if not e.ok]
        assert after == [], f"{report}\nerrors after recovery: {after[:5]}"


async def test_restart_under_mixed_load(pg_cluster: PgCluster, app_database: str) -> None:
    env = base_env(app_database)
    with uvicorn_server(USERS_API, env, access_log=False) as server:
        ledger, outages = await restarts_under_load(
            pg_cluster,
            server.url,
            restarts=int(scaled(1, 5)),
            outage_s=scaled(2, 5),
            between_s=scaled(2, 8),
        )
        server.stop()
        log = server.log()
    recovery = [ledger.first_ok_after(up) for _, up in outages]
    report = ledger.summary("restart: ") + (
        f"; outages {[round(up - down, 1) for down, up in outages]} s, "
        f"recovery {[round(r, 2) if r is not None else None for r in recovery]} s"
    )
    print("\n" + report)
    assert ledger.count(500) == 0, report
    assert ledger.count(None) == 0, report  # every request was answered: none hung
    assert set(ledger.statuses) <= {200, 201, 503}, report
    assert ledger.count(503) > 0, report  # the outage was seen
    assert ledger.without_retry_after() == [], report
    assert ledger.slowest() <= DEADLINE_S + MARGIN_S, report
    assert_recovered(ledger, outages, report)
    assert ledger.lost_writes(app_database) == [], report
    assert ledger.phantom_writes(app_database) == [], report
    assert "Traceback" not in log, log[-3000:]
