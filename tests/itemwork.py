"""Helpers for the item-processing proofs: apps with ITEM_* settings, their items' rows."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import create_engine, select

from fastapi_dbpool import Database, DatabaseSettings
from fastapi_dbpool.testing import assert_pool_idle
from users_api.models import Item
from users_api.settings import ItemSettings

__all__ = [
    "item_app",
    "item_rows",
    "new_items",
    "running",
    "wait_until_done",
]


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
