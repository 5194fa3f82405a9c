"""Helpers for the item-processing proofs: apps with ITEM_* settings, rows, the audit trail.

The audit trail is a test-only table and trigger (PostgreSQL) that records every change
of an item's status or lease with the server's clock, so that a test can prove from
the database itself that no two leases of one item ever overlapped and that each
result was applied once.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import httpx
import psycopg
from fastapi import FastAPI
from sqlalchemy import create_engine, select

from fastapi_dbpool import Database, DatabaseSettings
from fastapi_dbpool.testing import assert_pool_idle
from tests.backends import libpq_url
from users_api.models import Item
from users_api.settings import ItemSettings

__all__ = [
    "AUDIT_SQL",
    "check_audit",
    "item_app",
    "item_rows",
    "new_items",
    "running",
    "wait_until_done",
]

AUDIT_SQL = """
CREATE TABLE item_audit (
    seq bigserial PRIMARY KEY,
    item_id int NOT NULL,
    old_status text, new_status text,
    old_token text, new_token text,
    old_until timestamptz, new_until timestamptz,
    processed_at timestamptz,
    applications int,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE FUNCTION item_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO item_audit (item_id, old_status, new_status, old_token, new_token,
                            old_until, new_until, processed_at, applications)
    VALUES (NEW.id, OLD.status, NEW.status, OLD.lease_token, NEW.lease_token,
            OLD.lease_until, NEW.lease_until, NEW.processed_at, NEW.applications);
    RETURN NEW;
END $$;
CREATE TRIGGER item_audit AFTER UPDATE ON items FOR EACH ROW EXECUTE FUNCTION item_audit();
"""


def item_app(settings: DatabaseSettings, **item_overrides: Any) -> FastAPI:
    """users_api on *settings*, with ITEM_* *item_overrides* (fast sweeps by default)."""
    from users_api.main import create_app

    items = {"sweep_s": 0.2, **item_overrides}
    return create_app(settings, item_settings=ItemSettings(**items))


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Run *app*'s lifespan with an in-process client; then check every connection came back."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client
        # The workers still run, but hold a connection only for the moment of a claim.
        await assert_pool_idle(_database(app))
    # Stopped: the workers are gone, and so must be every connection they had.
    assert _database(app).pool_snapshot().checked_out == 0
    gc.collect()


def _database(app: FastAPI) -> Database:
    database: Database = app.state.fastapi_dbpool
    return database


async def new_items(
    client: httpx.AsyncClient, count: int, *, description: str = "one two three"
) -> list[int]:
    """Create a user and *count* pending items of theirs; return the items' ids."""
    email = f"owner{time.monotonic_ns()}@example.com"
    owner = (await client.post("/users", json={"name": "Owner", "email": email})).json()["id"]
    ids = []
    for _ in range(count):
        body = {"title": "T", "owner_id": owner, "description": description}
        response = await client.post("/items", json=body)
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    return ids


def item_rows(url: str, ids: Iterable[int] | None = None) -> dict[int, dict[str, Any]]:
    """The items' rows, read with a sync engine of the test's own (not the app's pool)."""
    engine = create_engine(DatabaseSettings(url=url).sync_url)
    try:
        with engine.connect() as conn:
            # The table's types: JSON parsed, timestamps aware, on both databases.
            rows = conn.execute(select(Item.__table__).order_by(Item.id)).mappings().all()
    finally:
        engine.dispose()
    wanted = None if ids is None else set(ids)
    return {r["id"]: dict(r) for r in rows if wanted is None or r["id"] in wanted}


async def wait_until_done(
    url: str, ids: Iterable[int], timeout: float, *, statuses: tuple[str, ...] = ("done",)
) -> float:
    """Wait until every item of *ids* is in one of *statuses*; return the seconds it took."""
    ids = list(ids)
    start = time.monotonic()
    deadline = start + timeout
    while True:
        rows = await asyncio.to_thread(item_rows, url, ids)
        left = {i: r["status"] for i, r in rows.items() if r["status"] not in statuses}
        if not left and len(rows) == len(ids):
            return time.monotonic() - start
        if time.monotonic() > deadline:
            raise AssertionError(f"after {timeout} s, {len(left)} item(s) not done: {left}")
        await asyncio.sleep(0.1)


def check_audit(url: str, lease_s: float) -> dict[str, int]:
    """Prove from the audit trail that leases never overlapped; return what it counted.

    For every item: each claim that took over a lease came after that lease had run
    out (the claim's time is its new lease end minus ITEM_LEASE_S); each result was
    written while its writer's lease held; exactly one result was written per done item.
    """
    lease = timedelta(seconds=lease_s)
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT item_id, old_status, new_status, old_token, new_token, old_until,"
            " new_until, processed_at FROM item_audit ORDER BY item_id, seq"
        ).fetchall()
    claims = takeovers = applications = 0
    for (
        item_id,
        old_status,
        new_status,
        old_token,
        new_token,
        old_until,
        new_until,
        done_at,
    ) in rows:
        if new_status == "processing" and new_token != old_token:
            claims += 1
            if old_status == "processing" and old_until is not None:
                takeovers += 1
                claimed_at = new_until - lease
                assert claimed_at > old_until, (
                    f"item {item_id}: lease {new_token} taken at {claimed_at} while "
                    f"{old_token} held it until {old_until}"
                )
        if new_status == "done" and old_status == "processing":
            applications += 1
            assert done_at <= old_until, (
                f"item {item_id}: result of {old_token} written at {done_at}, "
                f"after its lease ended at {old_until}"
            )
    return {"claims": claims, "takeovers": takeovers, "applications": applications}
