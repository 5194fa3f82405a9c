"""Scenario 1: the database restarts in the middle of mixed load.

What must hold: no 500; requests during the outage are answered 503 with
``Retry-After`` within the deadline, none hangs; the app serves normally within 1 s of
the server's return, with no stale-connection error afterwards; every acknowledged
write is in the database.

The deadline, from the code (docs/reliability.md, "Deadline arithmetic"): a checkout
waits up to the pool timeout P for a permit, then up to the connect timeout C for a
new connection (or a pre-ping's reconnect), so a request through a session ends within
P + C. A direct read (``GET /users/{id}``) whose pooled connection turns out dead
retries once on a fresh one (request/direct.py): its permit wait is what is left of P,
then a connect, so P + C too, or P + 2C when the dead connection had just been opened
by a pre-ping's reconnect.

Figures: ``.venv/bin/pytest tests/reliability/test_restart.py -s``
(``RELIABILITY_FULL=1`` for the full run).
"""

from __future__ import annotations

import pytest

from tests.pgcluster import PgCluster
from tests.reliability.conftest import CONNECT_TIMEOUT_S, POOL_TIMEOUT_S, base_env, scaled
from tests.reliability.faults import assert_recovered, restarts_under_load
from tests.servers import USERS_API, uvicorn_server

pytestmark = [pytest.mark.postgres_only, pytest.mark.slow, pytest.mark.timing]

DEADLINE_S = POOL_TIMEOUT_S + CONNECT_TIMEOUT_S
# The one operation on a direct connection, which retries once on a fresh one.
DIRECT_READ = "get_user"
DIRECT_DEADLINE_S = POOL_TIMEOUT_S + 2 * CONNECT_TIMEOUT_S
# What the loaded 2-core machine may add to a deadline (a checkout's greenlet, the
# answer's way back through uvicorn and the load generator).
SLACK_S = 1.0


async def test_restart_under_mixed_load(pg_cluster: PgCluster, app_database: str) -> None:
    env = base_env(app_database)
    with uvicorn_server(USERS_API, env, access_log=False) as server:
        ledger, outages = await restarts_under_load(
            pg_cluster,
            server.url,
            restarts=int(scaled(1, 5)),
            outage_s=scaled(2, 5),
            between_s=scaled(2, 8),
            timeout=DEADLINE_S + 10,
        )
        server.stop()
        log = server.log()
    recovery = [ledger.first_ok_after(up) for _, up in outages]
    slowest_503 = {
        op: max(e.elapsed for e in ledger.entries if e.op == op and e.status == 503)
        for op in sorted({e.op for e in ledger.entries if e.status == 503})
    }
    report = ledger.summary("restart: ") + (
        f"; outages {[round(up - down, 1) for down, up in outages]} s, "
        f"recovery {[round(r, 2) if r is not None else None for r in recovery]} s; "
        f"slowest 503 by operation { ({op: round(s, 2) for op, s in slowest_503.items()}) }"
    )
    print("\n" + report)
    assert ledger.count(500) == 0, report
    assert ledger.count(None) == 0, report  # every request was answered: none hung
    assert set(ledger.statuses) <= {200, 201, 503}, report
    assert ledger.count(503) > 0, report  # the outage was seen
    assert ledger.without_retry_after() == [], report
    # Each answer, the 503s above all, within its deadline (and a small slack).
    late = [
        e
        for e in ledger.entries
        if e.elapsed > (DIRECT_DEADLINE_S if e.op == DIRECT_READ else DEADLINE_S) + SLACK_S
    ]
    assert late == [], f"{report}\npast their deadline: {late[:5]}"
    assert_recovered(ledger, outages, report)
    assert ledger.lost_writes(app_database) == [], report
    assert ledger.phantom_writes(app_database) == [], report
    assert "Traceback" not in log, log[-3000:]
