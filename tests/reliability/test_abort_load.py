"""10,000 requests through uvicorn on PostgreSQL, about 5 % aborted by the client: no leak.

After the load, and with the server still running:

* zero connections checked out from the pool (the app's ``GET /_pool``, after a
  garbage collection that would make SQLAlchemy warn about dropped connections);
* zero server sessions of the app ``idle in transaction`` in ``pg_stat_activity``;
* every request the client did not abort answered 2xx;
* after shutdown, no "non-checked-in connection" warning (the server runs with
  ``-W always``) and no traceback in the server's log.

Reproduce the figures: ``.venv/bin/pytest tests/reliability/test_abort_load.py -s``.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.abort_load import run_load
from tests.pgstat import app_sessions
from tests.servers import uvicorn_server

TOTAL = 10_000
ABORT_RATE = 0.05
USERS = 50
TIME_BUDGET_S = 120


@pytest.mark.postgres_only
@pytest.mark.slow
async def test_aborted_requests_leak_nothing(database_url: str) -> None:
    env = {"DATABASE_URL": database_url, "DB_POOL_SIZE": "10", "DB_POOL_TIMEOUT": "5"}
    app = "tests.pressure_app:users_api_with_pool_stats"
    with uvicorn_server(app, env, factory=True, access_log=False) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            user_ids = []
            for n in range(USERS):
                created = await client.post("/users", json={"name": "U", "email": f"u{n}@x.com"})
                assert created.status_code == 201, created.text
                user_ids.append(created.json()["id"])

            started = time.perf_counter()
            # A leak exhausts the pool, and then every request waits DB_POOL_TIMEOUT:
            # bound the whole run rather than wait for the test's own timeout.
            try:
                report = await asyncio.wait_for(
                    run_load(
                        "127.0.0.1", server.port, user_ids, total=TOTAL, abort_rate=ABORT_RATE
                    ),
                    TIME_BUDGET_S,
                )
            except TimeoutError:
                pool = (await client.get("/_pool")).json()
                pytest.fail(f"the load did not finish within {TIME_BUDGET_S} s; pool: {pool}")

            # Handlers of aborted requests may still be finishing: give them a moment.
            pool: dict[str, int] = {}
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                pool = (await client.get("/_pool", params={"gc": "true"})).json()
                if pool["checked_out"] == 0:
                    break
                await asyncio.sleep(0.1)
            sessions = app_sessions(database_url)
            elapsed = time.perf_counter() - started
        exit_code = server.stop()
        log = server.log()

    print(
        f"\n{report.sent} requests in {report.seconds:.1f} s ({report.sent / report.seconds:.0f}"
        f" req/s), {report.aborted_total} aborted {dict(report.aborted)}; "
        f"statuses {dict(report.statuses)}; after: checked_out={pool['checked_out']}, "
        f"server sessions {sorted(sessions)}, invalidations={pool['invalidations_total']}"
    )
    assert report.sent == TOTAL
    assert 0.03 * TOTAL <= report.aborted_total <= 0.07 * TOTAL
    assert report.failures == [], report.failures[:20]
    assert report.answered == TOTAL - report.aborted_total
    assert pool["checked_out"] == 0, pool
    assert not [s for s in sessions if s.startswith("idle in transaction")], sessions
    assert "non-checked-in" not in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    # uvicorn re-raises SIGTERM after a graceful shutdown: -15 is a clean exit.
    assert exit_code in (0, -15), log[-3000:]
    assert elapsed < TIME_BUDGET_S
