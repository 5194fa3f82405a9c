"""A database outage in the middle of item processing: everything ends done, nothing twice.

A throwaway PostgreSQL cluster (the shared server is never stopped) is stopped for 5 s
while 50 items are queued or processing; the app is not restarted.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.backends import migrate
from tests.conftest import make_settings
from tests.itemwork import item_app, item_rows, new_items, running, wait_until_done
from tests.pgcluster import PgCluster, pg_cluster
from tests.polling import eventually

__all__ = ["pg_cluster"]  # the fixture, imported for this module's tests

OUTAGE_S = 5


@pytest.mark.slow
async def test_outage_while_items_are_processing(pg_cluster: PgCluster) -> None:
    url = pg_cluster.url
    migrate(url)
    settings = make_settings(url, pool_size=4, pool_timeout=2, connect_timeout=1)
    app = item_app(settings, workers=4, processing_delay_ms=200)
    async with running(app) as client:
        ids = await new_items(client, 50)
        for item_id in ids:
            assert (await client.post(f"/items/{item_id}/process")).status_code == 202
        await eventually(
            lambda: any(r["status"] == "done" for r in item_rows(url, ids).values()),
            what="the first items done",
        )
        before = item_rows(url, ids)
        assert any(r["status"] != "done" for r in before.values()), "nothing left to interrupt"
        await asyncio.to_thread(pg_cluster.stop)
        down_since = time.monotonic()
        # The outage itself lasts OUTAGE_S; meanwhile the workers keep retrying.
        await asyncio.sleep(OUTAGE_S)
        await asyncio.to_thread(pg_cluster.start)
        down_for = time.monotonic() - down_since
        took = await wait_until_done(url, ids, timeout=40)
    rows = item_rows(url, ids)
    assert {r["applications"] for r in rows.values()} == {1}, "an item was applied twice"
    assert {r["lease_token"] for r in rows.values()} == {None}
    left = sum(r["status"] != "done" for r in before.values())
    print(f"\noutage {down_for:.1f} s with {left}/50 items left: all done {took:.1f} s after")
    registry = app.state.fastapi_dbpool_metrics.registry
    retries = sum(
        registry.get_sample_value("users_api_item_retries_total", {"step": step}) or 0
        for step in ("claim", "finish")
    )
    assert retries > 0, "the outage went unnoticed: did the cluster stop?"
