"""Item metrics under two uvicorn workers with PROMETHEUS_MULTIPROC_DIR.

The counters live in each worker's files and add up; the status gauge is a fact of the
database, read by whichever worker answers, so it is never counted twice.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import USERS_API, uvicorn_server

pytestmark = pytest.mark.slow

ITEMS = 12


def scrape(client: httpx.Client, url: str) -> dict[tuple[str, str], float]:
    response = client.get(url + "/metrics")
    assert response.status_code == 200, response.text
    return {
        (sample.name, sample.labels.get("status", "")): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name.startswith("users_api_item")
    }


def test_item_metrics_with_two_workers(database_url: str, tmp_path: Path) -> None:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    env = {
        "DATABASE_URL": database_url,
        "PROMETHEUS_MULTIPROC_DIR": str(directory),
        "DB_POOL_SIZE": "4",
        "ITEM_SWEEP_S": "0.2",
    }
    with (
        uvicorn_server(USERS_API, env, workers=2, access_log=False) as server,
        # A new connection per request, so that both workers get some.
        httpx.Client(limits=httpx.Limits(max_keepalive_connections=0), timeout=30) as client,
    ):
        body = {"name": "Ada", "email": "ada@example.com"}
        owner = client.post(server.url + "/users", json=body).json()["id"]
        item = {"title": "T", "owner_id": owner, "description": "a b"}
        ids = [client.post(server.url + "/items", json=item).json()["id"] for _ in range(ITEMS)]
        for item_id in ids:
            assert client.post(f"{server.url}/items/{item_id}/process").status_code == 202
        deadline = time.monotonic() + 30
        while True:
            samples = scrape(client, server.url)
            if samples.get(("users_api_item_claims_total", "")) == ITEMS:
                break
            assert time.monotonic() < deadline, samples
            time.sleep(0.2)
        # Once more, a second later: the status counts are read at most once a second.
        time.sleep(1.1)
        for _ in range(4):  # whichever worker answers
            samples = scrape(client, server.url)
            assert samples[("users_api_items", "done")] == ITEMS
            assert samples[("users_api_item_queued_to_done_seconds_count", "")] == ITEMS
