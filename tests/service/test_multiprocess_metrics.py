"""/metrics under two uvicorn workers with PROMETHEUS_MULTIPROC_DIR: totals add up.

Each worker has its own pool and its own counters. In prometheus-client's
multiprocess mode every worker writes its values to files in the directory, and a
scrape, whichever worker answers it, sums them. The test spreads requests over both
workers (a new connection each), checks from the files that both served some, and
that every scrape reports the sum.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import USERS_API, uvicorn_server

pytestmark = pytest.mark.slow

ROUTE = "/users/{user_id}"
POOL_SIZE = 4


def fresh_connections() -> httpx.Client:
    """A client that opens a new connection per request, so the kernel hands them to
    both workers (one client: building one per request costs ~0.1 s of TLS set-up)."""
    return httpx.Client(limits=httpx.Limits(max_keepalive_connections=0), timeout=30)


def scrape(client: httpx.Client, url: str) -> dict[str, float]:
    """Sum of each sample name over its series, filtered to the user route for requests."""
    response = client.get(url + "/metrics")
    assert response.status_code == 200, response.text
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if "route" in sample.labels and sample.labels["route"] != ROUTE:
                continue
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def requests_by_process(directory: Path) -> dict[int, float]:
    """Requests to ROUTE counted in each worker's own file."""
    counts = {}
    for path in directory.glob("counter_*.db"):
        pid = int(path.stem.split("_")[1])
        total = 0.0
        for metric in MultiProcessCollector.merge([str(path)], accumulate=False):
            for sample in metric.samples:
                if sample.name == "http_requests_total" and sample.labels.get("route") == ROUTE:
                    total += sample.value
        counts[pid] = total
    return counts


def test_two_workers_add_up(backend: str, database_url: str, tmp_path: Path) -> None:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    with (
        uvicorn_server(
            USERS_API,
            {
                "DATABASE_URL": database_url,
                "PROMETHEUS_MULTIPROC_DIR": str(directory),
                "DB_POOL_SIZE": str(POOL_SIZE),
            },
            workers=2,
            log_path=tmp_path / "server.log",
        ) as server,
        fresh_connections() as client,
    ):
        body = {"name": "Ada", "email": "ada@example.com"}
        user = client.post(server.url + "/users", json=body).json()

        def get_user(_: int) -> int:
            return client.get(f"{server.url}/users/{user['id']}").status_code

        sent = 0
        with ThreadPoolExecutor(8) as pool:
            while sent < 1000:
                assert set(pool.map(get_user, range(100))) == {200}
                sent += 100
                if sum(1 for n in requests_by_process(directory).values() if n) >= 2:
                    break
        served = {pid: n for pid, n in requests_by_process(directory).items() if n}
        assert len(served) == 2, f"requests did not reach both workers: {served}"
        assert sum(served.values()) == sent

        # Pool counters reach the files once a second per worker.
        deadline = time.monotonic() + 10
        while (totals := scrape(client, server.url)).get("dbpool_checkouts_total", 0) < sent + 1:
            assert time.monotonic() < deadline, totals
            time.sleep(0.2)
        for _ in range(4):  # whichever worker answers, the same sums
            totals = scrape(client, server.url)
            assert totals["http_requests_total"] == sent
            assert totals["http_request_duration_seconds_count"] == sent
            assert totals["dbpool_size"] == 2 * POOL_SIZE
            assert totals["dbpool_checked_out"] == 0
            assert totals["dbpool_checkouts_total"] >= sent + 1
            assert totals["dbpool_checkout_wait_seconds_count"] >= sent + 1
            assert totals["dbpool_hold_seconds_count"] >= sent + 1
        assert list(directory.glob("gauge_livesum_*.db"))

    # A worker that stopped no longer counts towards the live gauges.
    assert not list(directory.glob("gauge_livesum_*.db"))
    assert "Traceback" not in server.log()
