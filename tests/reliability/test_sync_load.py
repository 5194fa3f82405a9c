"""No cliff at threads + pool: sync endpoints under 100 clients, through a real uvicorn.

FastAPI's tutorial shape (a sync ``get_db()`` generator, a ``def`` dependency and a
``def`` endpoint) deadlocks once clients outnumber the threadpool's 40 threads plus the
pool's connections: with a pool of 5 it serves about 2 requests/s at 100 clients,
with 500s in waves at every pool timeout (``python -m bench.sync_deadlock`` measures
it next to ours). The same endpoint on SyncSessionDep must keep its throughput.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.backends import REQUIRE_SYSTEM_DEPS, skip_or_fail
from tests.seed import seed_user_with_items
from tests.servers import uvicorn_server
from tests.wrk import LoadResult, run_wrk, wrk_path

pytestmark = [pytest.mark.slow, pytest.mark.timing]

POOL_TIMEOUT_S = 5
# A request answered later than the pool timeout plus this has waited past it.
MARGIN_S = 1.0


@pytest.fixture
def items_url(database_url: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The load app's sync endpoint, served by uvicorn on a pool of 5; and its log file."""
    if wrk_path() is None:
        skip_or_fail("wrk is not installed", required=REQUIRE_SYSTEM_DEPS)
    user_id = seed_user_with_items(database_url, items=10)
    env = {
        "DATABASE_URL": database_url,
        "DB_POOL_SIZE": "5",
        "DB_MAX_OVERFLOW": "0",
        "DB_POOL_TIMEOUT": str(POOL_TIMEOUT_S),
        "SYNC_LOAD_SHAPE": "dbpool",
    }
    log = tmp_path / "uvicorn.log"
    app = "tests.apps.sync_load:create_app"
    with uvicorn_server(app, env, factory=True, access_log=False, log_path=log) as server:
        yield f"{server.url}/users/{user_id}/items", log


def _assert_served(result: LoadResult, report: str) -> None:
    assert result.count(500) == 0, report
    assert set(result.statuses) <= {200, 503}, report
    assert result.count(200) >= 0.99 * result.requests, report
    assert not any(result.socket_errors.values()), report
    assert result.max_s < POOL_TIMEOUT_S + MARGIN_S, report


def test_sync_endpoint_has_no_cliff_past_threads_plus_pool(items_url: tuple[str, Path]) -> None:
    url, log = items_url
    at_40 = run_wrk(url, clients=40, seconds=6)
    at_100 = run_wrk(url, clients=100, seconds=20)
    report = f"\n{at_40.summary()}\n{at_100.summary()}\n{log.read_text()[-3000:]}"
    print(report)
    _assert_served(at_40, report)
    _assert_served(at_100, report)
    assert at_40.requests > 100, report
    assert at_100.rps >= at_40.rps / 2, report
    server_log = log.read_text()
    assert "Traceback" not in server_log, report
    assert "non-checked-in" not in server_log, report
