"""The baseline: the raw driver's own pool (asyncpg; aiosqlite connections on SQLite).

Hand-written SQL, one statement per request in autocommit, rows handed to the response
model as dicts. This is the fastest a FastAPI app can reasonably talk to the database.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiosqlite
import asyncpg
from fastapi import BackgroundTasks, FastAPI, HTTPException

from .common import (
    IS_SQLITE,
    POOL_SIZE,
    ItemOut,
    ProcessAccepted,
    UserIn,
    UserOut,
    analyse,
    freeze_startup_heap,
    postgres_dsn,
    sqlite_path,
)

USER_COLUMNS = "id, name, email, created_at"
ITEM_COLUMNS = "id, owner_id, title, description, status, result, processed_at, created_at"


class SqlitePool:
    """A fixed set of aiosqlite connections handed out through a queue."""

    def __init__(self, path: str, size: int) -> None:
        self.path, self.size = path, size
        self.free: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()

    async def open(self) -> None:
        for _ in range(self.size):
            conn = await aiosqlite.connect(self.path, timeout=5, isolation_level=None)
            conn.row_factory = aiosqlite.Row
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute("PRAGMA synchronous=NORMAL")
            self.free.put_nowait(conn)

    async def close(self) -> None:
        while not self.free.empty():
            await self.free.get_nowait().close()

    async def run(self, fn: Callable[[aiosqlite.Connection], Awaitable[Any]]) -> Any:
        conn = await self.free.get()
        try:
            return await fn(conn)
        finally:
            self.free.put_nowait(conn)

    async def fetchrow(self, sql: str, *args: Any) -> dict[str, Any] | None:
        async def go(conn: aiosqlite.Connection) -> dict[str, Any] | None:
            async with conn.execute(sql, args) as cursor:
                row = await cursor.fetchone()
            return dict(row) if row is not None else None

        return await self.run(go)

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        async def go(conn: aiosqlite.Connection) -> list[dict[str, Any]]:
            return [dict(row) for row in await conn.execute_fetchall(sql, args)]

        return await self.run(go)


def _q(sql: str) -> str:
    # asyncpg numbers its parameters ($1); sqlite3 takes "?".
    if not IS_SQLITE:
        return sql
    for n in range(9, 0, -1):
        sql = sql.replace(f"${n}", "?")
    return sql


db: Any = None


async def _init_pg(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    global db
    if IS_SQLITE:
        db = SqlitePool(sqlite_path(), POOL_SIZE)
        await db.open()
    else:
        db = await asyncpg.create_pool(
            postgres_dsn(), min_size=POOL_SIZE, max_size=POOL_SIZE, init=_init_pg
        )
    yield
    await db.close()


app = freeze_startup_heap(FastAPI(lifespan=lifespan))


def _item(row: Any) -> dict[str, Any]:
    item = dict(row)
    if isinstance(item["result"], str):  # SQLite keeps JSON as text
        item["result"] = json.loads(item["result"])
    return item


@app.get("/users/{user_id}", response_model=UserOut)
async def get_user(user_id: int) -> Any:
    row = await db.fetchrow(_q(f"SELECT {USER_COLUMNS} FROM users WHERE id = $1"), user_id)
    if row is None:
        raise HTTPException(404, "user not found")
    return dict(row)


@app.post("/users", status_code=201, response_model=UserOut)
async def create_user(body: UserIn) -> Any:
    row = await db.fetchrow(
        _q(f"INSERT INTO users (name, email) VALUES ($1, $2) RETURNING {USER_COLUMNS}"),
        body.name,
        body.email,
    )
    return dict(row)


@app.get("/items", response_model=list[ItemOut])
async def list_items(owner_id: int, limit: int = 50, offset: int = 0) -> Any:
    rows = await db.fetch(
        _q(f"SELECT {ITEM_COLUMNS} FROM items WHERE owner_id = $1 ORDER BY id LIMIT $2 OFFSET $3"),
        owner_id,
        limit,
        offset,
    )
    return [_item(row) for row in rows]


async def _process_item(item_id: int) -> None:
    row = await db.fetchrow(
        _q(
            "UPDATE items SET status = 'processing' WHERE id = $1 AND status = 'queued' "
            "RETURNING description"
        ),
        item_id,
    )
    if row is None:
        return
    result = json.dumps(analyse(row["description"]))
    await db.fetchrow(
        _q(
            "UPDATE items SET status = 'done', result = $1, processed_at = CURRENT_TIMESTAMP "
            "WHERE id = $2 AND status = 'processing' RETURNING id"
        ),
        result if IS_SQLITE else json.loads(result),
        item_id,
    )


@app.post("/items/{item_id}/process", status_code=202, response_model=ProcessAccepted)
async def process(item_id: int, tasks: BackgroundTasks) -> Any:
    row = await db.fetchrow(
        _q(
            "UPDATE items SET status = 'queued', result = NULL, processed_at = NULL "
            "WHERE id = $1 AND status IN ('pending', 'failed') RETURNING id"
        ),
        item_id,
    )
    if row is not None:
        tasks.add_task(_process_item, item_id)
        return {"id": item_id, "status": "queued"}
    found = await db.fetchrow(_q("SELECT status FROM items WHERE id = $1"), item_id)
    if found is None:
        raise HTTPException(404, "item not found")
    if found["status"] == "done":
        raise HTTPException(409, "item already processed")
    return {"id": item_id, "status": found["status"]}
