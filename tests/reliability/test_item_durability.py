"""Durable item processing in one process, on both databases (issue 8).

The three reproductions of the issue, as tests: an item stuck after a pool timeout, an
item stuck after its worker died mid-claim, an item run twice when a second instance
started. And the rest of the contract: attempts, failures, shutdown, metrics.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx
import psycopg
import pytest
from fastapi import FastAPI
from sqlalchemy import create_engine, select, update

from fastapi_dbpool import Database, DatabaseSettings
from tests.backends import libpq_url
from tests.conftest import make_settings
from tests.itemwork import item_app, item_rows, new_items, running, wait_until_done
from tests.polling import eventually
from users_api import item_queue
from users_api.models import Item, utcnow

RESULT = {"words": 3, "characters": 13}  # of "one two three"


def sample(app: FastAPI, name: str, **labels: str) -> float:
    """A value of the app's /metrics registry (0 when the sample does not exist yet)."""
    value = app.state.fastapi_dbpool_metrics.registry.get_sample_value(name, labels)
    return float(value or 0)


def database_of(app: FastAPI) -> Database:
    database: Database = app.state.fastapi_dbpool
    return database


async def set_rows(url: str, ids: list[int], **values: object) -> None:
    """UPDATE the items *ids* from outside the app, as another process would.

    In a thread: on SQLite it waits for the write lock, which the app's workers,
    on this event loop, must be able to release.
    """
    await asyncio.to_thread(_set_rows, url, ids, values)


def _set_rows(url: str, ids: list[int], values: dict[str, object]) -> None:
    engine = create_engine(DatabaseSettings(url=url).sync_url)
    try:
        with engine.begin() as conn:
            conn.execute(update(Item).where(Item.id.in_(ids)).values(**values))
    finally:
        engine.dispose()


async def process_all(client: httpx.AsyncClient, ids: list[int]) -> None:
    for item_id in ids:
        response = await client.post(f"/items/{item_id}/process")
        assert response.status_code == 202, response.text
        assert response.json() == {"id": item_id, "status": "queued"}


def assert_done_once(url: str, ids: list[int]) -> None:
    rows = item_rows(url, ids)
    assert {i: r["status"] for i, r in rows.items()} == dict.fromkeys(ids, "done")
    assert {i: r["applications"] for i, r in rows.items()} == dict.fromkeys(ids, 1)
    assert all(r["result"] == RESULT and r["lease_token"] is None for r in rows.values())


# -- 1. a pool timeout never strands an item --------------------------------------------


async def _hold(database: Database, holding: asyncio.Event, release: asyncio.Event) -> None:
    # Read-only: on SQLite a writing connection would also take the write gate.
    async with database.connection(read_only=True) as db:
        await db.scalar(select(1))
        holding.set()
        await release.wait()


@pytest.mark.slow
async def test_pool_starvation_does_not_strand_items(database_url: str) -> None:
    settings = make_settings(database_url, pool_size=2, max_overflow=0, pool_timeout=1)
    app = item_app(settings, processing_delay_ms=200)
    async with running(app) as client:
        database = database_of(app)
        ids = await new_items(client, 4)
        await process_all(client, ids)
        # Every connection held for 3 s, as the requests stuck on a locked table did in
        # the issue: each step of the workers meets a PoolTimeout meanwhile.
        release = asyncio.Event()
        holding = [asyncio.Event(), asyncio.Event()]
        holders = [asyncio.create_task(_hold(database, h, release)) for h in holding]
        started = asyncio.get_running_loop().time()
        for each in holding:
            await asyncio.wait_for(each.wait(), 10)
        await eventually(
            lambda: (
                sample(app, "users_api_item_retries_total", step="claim")
                + sample(app, "users_api_item_retries_total", step="finish")
                >= 2
            ),
            timeout=10,
            what="workers retrying after pool timeouts",
        )
        # At least one step met the pool's own timeout; on SQLite the other worker may
        # wait at the write gate instead, which writers take before the pool.
        assert database.pool_snapshot().timeouts_total >= 1
        await asyncio.sleep(max(0.0, 3 - (asyncio.get_running_loop().time() - started)))
        statuses = {
            r["status"] for r in (await asyncio.to_thread(item_rows, database_url, ids)).values()
        }
        assert statuses <= {"queued", "processing"}, "nothing may fail for a pool timeout"
        release.set()
        await asyncio.gather(*holders)
        # Within a few seconds of the release, with no restart.
        assert await wait_until_done(database_url, ids, timeout=8) < 8
    assert_done_once(database_url, ids)


@pytest.mark.postgres_only
@pytest.mark.slow
async def test_locked_users_table_reproduction(database_url: str) -> None:
    """Issue 8, point 1, as written: users locked 3 s from psql, GET /users/1 holding the pool."""
    settings = make_settings(database_url, pool_size=2, max_overflow=0, pool_timeout=1)
    app = item_app(settings, processing_delay_ms=200)
    async with running(app) as client:
        ids = await new_items(client, 2)
        user_id = item_rows(database_url, ids)[ids[0]]["owner_id"]
        with psycopg.connect(libpq_url(database_url)) as locker:
            locker.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
            await process_all(client, ids)
            readers = [asyncio.create_task(client.get(f"/users/{user_id}")) for _ in range(4)]
            await eventually(
                lambda: (
                    sample(app, "users_api_item_retries_total", step="claim")
                    + sample(app, "users_api_item_retries_total", step="finish")
                    >= 1
                ),
                timeout=10,
                what="a worker step timing out on the starved pool",
            )
            await asyncio.sleep(2)  # the rest of the lock's 3 s
            locker.commit()
        answers = await asyncio.gather(*readers)
        assert {r.status_code for r in answers} <= {200, 503}
        assert await wait_until_done(database_url, ids, timeout=8) < 8
    assert_done_once(database_url, ids)


# -- 2. a worker that died never strands an item -----------------------------------------


async def test_item_of_a_dead_worker_is_taken_over_when_its_lease_ends(database_url: str) -> None:
    app = item_app(make_settings(database_url, pool_size=5))
    async with running(app) as client:
        (item_id,) = await new_items(client, 1)
        # The row as a process killed after its claim committed leaves it.
        lease_end = utcnow() + timedelta(seconds=1)
        await set_rows(
            database_url,
            [item_id],
            status="processing",
            lease_token="d" * 32,
            lease_until=lease_end,
            attempts=1,
            queued_at=utcnow(),
        )
        again = await client.post(f"/items/{item_id}/process")
        assert again.status_code == 202 and again.json()["status"] == "processing"
        await wait_until_done(database_url, [item_id], timeout=10)
        assert utcnow() >= lease_end, "taken before the lease ended"
        assert sample(app, "users_api_item_lease_expiries_total") == 1
    assert_done_once(database_url, [item_id])
    assert item_rows(database_url, [item_id])[item_id]["attempts"] == 2


@pytest.mark.postgres_only
async def test_uncommitted_claim_of_a_killed_process(database_url: str) -> None:
    """Issue 8, point 2: killed while its claim was uncommitted; the row is skipped, then taken."""
    app = item_app(make_settings(database_url, pool_size=5))
    async with running(app) as client:
        locked, free = await new_items(client, 2)
        dying = psycopg.connect(libpq_url(database_url))
        try:
            dying.execute(
                "UPDATE items SET status = 'queued', queued_at = now() WHERE id = %s", (locked,)
            )
            dying.commit()
            dying.execute(
                "UPDATE items SET status = 'processing', lease_token = 'dying',"
                " lease_until = now() + interval '1 hour' WHERE id = %s",
                (locked,),
            )
            # SKIP LOCKED: the workers pass the locked row and take the next one.
            await process_all(client, [free])
            await wait_until_done(database_url, [free], timeout=10)
            with psycopg.connect(libpq_url(database_url), autocommit=True) as admin:
                # What the server does when the process on the other end is killed.
                admin.execute("SELECT pg_terminate_backend(%s)", (dying.info.backend_pid,))
        finally:
            dying.close()
        # Its claim rolled back: queued again, and the sweep takes it.
        await wait_until_done(database_url, [locked], timeout=10)
    assert_done_once(database_url, [locked, free])


# -- 3. a second instance never touches a live lease ------------------------------------


async def test_second_instance_leaves_live_leases_alone(database_url: str) -> None:
    first = item_app(make_settings(database_url, pool_size=5), workers=1, processing_delay_ms=3000)
    async with running(first) as client:
        (item_id,) = await new_items(client, 1)
        await process_all(client, [item_id])
        await eventually(
            lambda: item_rows(database_url, [item_id])[item_id]["status"] == "processing",
            what="the first instance's claim",
        )
        token = item_rows(database_url, [item_id])[item_id]["lease_token"]
        second = item_app(make_settings(database_url, pool_size=5))
        async with running(second):
            row = item_rows(database_url, [item_id])[item_id]
            assert (row["status"], row["lease_token"]) == ("processing", token)
            await wait_until_done(database_url, [item_id], timeout=10)
            assert sample(second, "users_api_item_claims_total") == 0
        assert sample(first, "users_api_item_claims_total") == 1
    assert_done_once(database_url, [item_id])
    assert item_rows(database_url, [item_id])[item_id]["attempts"] == 1


# -- attempts and failures ---------------------------------------------------------------


async def test_failed_after_max_attempts_with_its_reason(database_url: str) -> None:
    app = item_app(make_settings(database_url, pool_size=5), max_attempts=3)
    async with running(app) as client:
        (item_id,) = await new_items(client, 1)
        # Claimed three times already, the last lease run out.
        await set_rows(
            database_url,
            [item_id],
            status="processing",
            lease_token="e" * 32,
            lease_until=utcnow() - timedelta(seconds=1),
            attempts=3,
        )
        await wait_until_done(database_url, [item_id], timeout=10, statuses=("failed",))
        shown = (await client.get(f"/items/{item_id}")).json()
        assert shown["status"] == "failed"
        assert shown["error"] == "gave up after 3 attempts"
        assert sample(app, "users_api_item_failures_total", reason="attempts") == 1
        # And it may be processed again, from a clean slate.
        await process_all(client, [item_id])
        await wait_until_done(database_url, [item_id], timeout=10)
        shown = (await client.get(f"/items/{item_id}")).json()
        assert shown["error"] is None and shown["result"] == RESULT
    assert item_rows(database_url, [item_id])[item_id]["attempts"] == 1


async def test_processing_error_fails_at_once(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The processing itself cannot be made to fail otherwise.
    def broken(description: str | None) -> dict[str, int]:
        raise ValueError(description)

    monkeypatch.setattr("users_api.worker.analyse", broken)
    app = item_app(make_settings(database_url, pool_size=5))
    async with running(app) as client:
        (item_id,) = await new_items(client, 1)
        await process_all(client, [item_id])
        await wait_until_done(database_url, [item_id], timeout=10, statuses=("failed",))
        shown = (await client.get(f"/items/{item_id}")).json()
        assert shown["error"] == "processing raised ValueError"
        assert sample(app, "users_api_item_failures_total", reason="error") == 1
    row = item_rows(database_url, [item_id])[item_id]
    assert (row["attempts"], row["applications"], row["lease_token"]) == (1, 0, None)


# -- shutdown ----------------------------------------------------------------------------


async def test_shutdown_releases_items_still_running_after_the_grace(database_url: str) -> None:
    settings = make_settings(database_url, pool_size=5)
    app = item_app(settings, workers=2, processing_delay_ms=5000, shutdown_grace_s=0.3)
    async with running(app) as client:
        ids = await new_items(client, 3)
        await process_all(client, ids)
        await eventually(lambda: len(app.state.item_workers.running) == 2, what="two items running")
        stopping = asyncio.get_running_loop().time()
    assert asyncio.get_running_loop().time() - stopping < 3
    rows = item_rows(database_url, ids)
    # Released, claim refunded: the next instance takes them at once.
    assert {r["status"] for r in rows.values()} == {"queued"}
    assert {(r["lease_token"], r["attempts"], r["applications"]) for r in rows.values()} == {
        (None, 0, 0)
    }
    async with running(item_app(settings)):
        assert await wait_until_done(database_url, ids, timeout=10) < 5
    assert_done_once(database_url, ids)


async def test_shutdown_lets_running_items_finish_within_the_grace(database_url: str) -> None:
    settings = make_settings(database_url, pool_size=5)
    app = item_app(settings, workers=1, processing_delay_ms=500, shutdown_grace_s=10)
    async with running(app) as client:
        first, second = await new_items(client, 2)
        await process_all(client, [first, second])
        await eventually(lambda: app.state.item_workers.running, what="an item running")
        (running_id,) = {lease.item_id for lease in app.state.item_workers.running.values()}
    rows = item_rows(database_url, [first, second])
    assert rows[running_id]["status"] == "done"
    # The worker stopped claiming: the other one waits, queued, for the next start.
    (other,) = {first, second} - {running_id}
    assert rows[other]["status"] == "queued"


# -- metrics -----------------------------------------------------------------------------


async def test_metrics_follow_the_items(database_url: str) -> None:
    app = item_app(make_settings(database_url, pool_size=5))
    async with running(app) as client:
        ids = await new_items(client, 3)
        await process_all(client, ids[:2])
        await wait_until_done(database_url, ids[:2], timeout=10)
        body = (await client.get("/metrics")).text
        assert 'users_api_items{status="done"} 2.0' in body
        assert 'users_api_items{status="pending"} 1.0' in body
        assert 'users_api_items{status="failed"} 0.0' in body
        assert sample(app, "users_api_item_claims_total") == 2
        assert sample(app, "users_api_item_queued_to_done_seconds_count") == 2
        assert sample(app, "users_api_item_lease_expiries_total") == 0


# -- wake-ups and sweeps -----------------------------------------------------------------


async def test_the_202_wakes_a_worker_at_once(database_url: str) -> None:
    # A sweep a minute away: only the wake-up can make this quick.
    app = item_app(make_settings(database_url, pool_size=5), sweep_s=60)
    async with running(app) as client:
        ids = await new_items(client, 3)
        await eventually(lambda: not app.state.item_workers.running, what="idle workers")
        await process_all(client, ids)
        assert await wait_until_done(database_url, ids, timeout=5) < 5
    assert_done_once(database_url, ids)


async def test_the_sweep_takes_work_queued_through_another_instance(database_url: str) -> None:
    settings = make_settings(database_url, pool_size=5)
    front = item_app(settings, workers=0)  # answers HTTP only
    back = item_app(settings, sweep_s=0.2)
    async with running(front) as client, running(back):
        ids = await new_items(client, 3)
        await process_all(client, ids)
        await wait_until_done(database_url, ids, timeout=10)
        assert sample(front, "users_api_item_claims_total") == 0
        assert sample(back, "users_api_item_claims_total") == 3
    assert_done_once(database_url, ids)


async def _keep_busy(database: Database, stop: asyncio.Event, hold_s: float) -> None:
    # Read-only: on SQLite a writing connection would also take the write gate.
    while not stop.is_set():
        async with database.connection(read_only=True) as db:
            await db.scalar(select(1))
            await asyncio.sleep(hold_s)


async def test_a_busy_pool_delays_the_sweep_but_never_skips_it(database_url: str) -> None:
    """Under sustained pressure the sweep still runs, within SWEEPS_SKIPPED_MAX sweeps."""
    settings = make_settings(database_url, pool_size=2, max_overflow=0, pool_timeout=10)
    app = item_app(settings, sweep_s=0.2)
    async with running(app) as client:
        database = database_of(app)
        ids = await new_items(client, 2)
        # Four readers on a pool of two: two hold a connection, two wait, at every
        # moment (one that gives its connection back queues again at once).
        stop = asyncio.Event()
        busy = [asyncio.create_task(_keep_busy(database, stop, 0.3)) for _ in range(4)]
        try:
            await eventually(lambda: database.pool_snapshot().waiting >= 2, what="a full pool")
            # Queued from outside, as through another instance: nothing wakes the workers.
            await set_rows(database_url, ids, status="queued", queued_at=utcnow())
            # SWEEPS_SKIPPED_MAX x 0.2 s, then the wait for a connection behind the readers.
            seconds = await wait_until_done(database_url, ids, timeout=8)
            assert database.pool_snapshot().waiting >= 1, "the pool must have stayed busy"
        finally:
            stop.set()
            await asyncio.gather(*busy)
    print(f"\nitems queued elsewhere, pool kept busy: done after {seconds:.2f} s")
    assert_done_once(database_url, ids)


# -- a worker whose lease ran out applies nothing -----------------------------------------


async def test_a_worker_whose_lease_ran_out_writes_nothing(database_url: str) -> None:
    """The token and lease checks of finish, fail and release, against a stale worker.

    Worker A's lease runs out and worker B takes the item over: whatever A writes
    afterwards matches nothing, and B's result is applied exactly once.
    """
    app = item_app(make_settings(database_url, pool_size=5), workers=0)
    async with running(app) as client:
        database = database_of(app)
        (item_id,) = await new_items(client, 1)
        await process_all(client, [item_id])  # queued; no worker runs in this app
        first = await item_queue.claim_next(database, lease_s=60, max_attempts=5)
        assert isinstance(first, item_queue.Lease) and first.item_id == item_id

        # A's lease runs out while A still runs: nobody else holds it yet, but a
        # result written now could race a takeover, so finishing is refused too.
        await set_rows(database_url, [item_id], lease_until=utcnow() - timedelta(seconds=1))
        assert await item_queue.finish(database, first, RESULT) is None
        row = item_rows(database_url, [item_id])[item_id]
        assert (row["status"], row["applications"], row["lease_token"]) == (
            "processing",
            0,
            first.token,
        )

        second = await item_queue.claim_next(database, lease_s=60, max_attempts=5)
        assert isinstance(second, item_queue.Lease) and second.item_id == item_id
        assert second.took_over and second.token != first.token

        # Every write of the stale worker matches nothing and changes nothing.
        assert await item_queue.finish(database, first, {"words": 0, "characters": 0}) is None
        assert await item_queue.fail(database, first, "stale worker") is False
        assert await item_queue.release(database, first, refund=True) is False
        row = item_rows(database_url, [item_id])[item_id]
        assert (row["status"], row["lease_token"], row["attempts"], row["applications"]) == (
            "processing",
            second.token,
            2,
            0,
        )

        assert await item_queue.finish(database, second, RESULT) is not None
        # Applied once: a repeat of the same finish finds the lease gone.
        assert await item_queue.finish(database, second, RESULT) is None
    assert_done_once(database_url, [item_id])
