"""SQLite: WAL, pragmas, and 50 concurrent writers without ``database is locked``.

SQLite-only by nature: PostgreSQL has row locks and needs no write gate.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import Integer, bindparam, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import create_async_engine

from fastapi_dbpool import Database, DatabaseSettings
from fastapi_dbpool.errors import PoolTimeout, TooManyWaiting
from fastapi_dbpool.testing import assert_pool_idle

WRITERS = 50


async def _database(path: Path, **overrides: object) -> Database:
    settings = DatabaseSettings(url=f"sqlite:///{path}", **overrides)
    database = Database(settings)
    await database.start()
    async with database.session() as session:
        await session.execute(text("CREATE TABLE IF NOT EXISTS counter (n INTEGER NOT NULL)"))
        await session.execute(
            text("CREATE TABLE IF NOT EXISTS log (id INTEGER PRIMARY KEY, n INTEGER)")
        )
        await session.execute(text("INSERT INTO counter VALUES (0)"))
    return database


@pytest.fixture
async def db_factory(tmp_path: Path) -> AsyncIterator:
    started: list[Database] = []

    async def make(**overrides: object) -> Database:
        database = await _database(tmp_path / "w.db", **overrides)
        started.append(database)
        return database

    yield make
    for database in started:
        await assert_pool_idle(database)
        await database.stop()


async def _read_then_write(database: Database) -> None:
    # Read first, then write: in a deferred transaction this is the shape that fails
    # at once with SQLITE_BUSY when another connection wrote in between.
    async with database.session() as session:
        n = await session.scalar(text("SELECT n FROM counter"))
        await asyncio.sleep(0.001)
        await session.execute(text("UPDATE counter SET n = :n"), {"n": n + 1})
        await session.execute(text("INSERT INTO log (n) VALUES (:n)"), {"n": n + 1})


async def _reader(database: Database) -> int:
    async with database.session(read_only=True) as session:
        return int(await session.scalar(text("SELECT count(*) FROM log")) or 0)


@pytest.mark.parametrize("pool_size", [1, 2, 5])
async def test_concurrent_writers_never_see_database_is_locked(db_factory, pool_size: int) -> None:
    database = await db_factory(pool_size=pool_size, max_overflow=0, pool_timeout=30)
    results = await asyncio.gather(
        *(_read_then_write(database) for _ in range(WRITERS)),
        *(_reader(database) for _ in range(WRITERS)),
        return_exceptions=True,
    )
    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == []
    async with database.session(read_only=True) as session:
        # Serialised: every increment saw the previous one, none was lost.
        assert await session.scalar(text("SELECT n FROM counter")) == WRITERS
        assert await session.scalar(text("SELECT count(DISTINCT n) FROM log")) == WRITERS


async def test_pragmas_are_set(db_factory) -> None:
    database = await db_factory()
    async with database.session(read_only=True) as session:
        assert (await session.scalar(text("PRAGMA journal_mode"))).lower() == "wal"
        assert await session.scalar(text("PRAGMA foreign_keys")) == 1
        assert await session.scalar(text("PRAGMA busy_timeout")) == 5000


async def test_readers_do_not_wait_for_the_writer(db_factory) -> None:
    database = await db_factory(pool_size=3)
    writer_holds = asyncio.Event()
    release = asyncio.Event()

    async def long_writer() -> None:
        async with database.session() as session:
            await session.execute(text("INSERT INTO log (n) VALUES (-1)"))
            writer_holds.set()
            await release.wait()

    task = asyncio.create_task(long_writer())
    await writer_holds.wait()
    assert database.write_gate is not None and database.write_gate.held
    # WAL: a read-only session reads the last committed state while the writer holds the lock.
    assert await asyncio.wait_for(_reader(database), timeout=2) == 0
    release.set()
    await task
    assert await _reader(database) == 1


async def test_gate_holder_never_waits_for_a_connection(db_factory) -> None:
    """With every connection held by tasks queued on the gate, the holder still finishes.

    The gate is taken after the checkout, so the holder already has its connection;
    the opposite order would deadlock here (holder waits for a connection, the
    connections' owners wait for the gate).
    """
    database = await db_factory(pool_size=2, max_overflow=0, pool_timeout=10)
    results = await asyncio.wait_for(
        asyncio.gather(*(_read_then_write(database) for _ in range(20)), return_exceptions=True),
        timeout=20,
    )
    assert [r for r in results if isinstance(r, BaseException)] == []


async def test_write_inside_a_write_with_one_connection_times_out_instead_of_hanging(
    db_factory,
) -> None:
    database = await db_factory(pool_size=1, max_overflow=0, pool_timeout=0.5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(PoolTimeout):
        async with database.session() as outer:
            await outer.execute(text("INSERT INTO log (n) VALUES (1)"))
            async with database.session() as inner:  # needs a second connection: none left
                await inner.execute(text("INSERT INTO log (n) VALUES (2)"))
    assert loop.time() - started < 5


# The pools' timeout message, which waiting for the write gate gives too.
BUSY_MESSAGE = r"^database busy: .* within 0\.30 s \(DB_POOL_TIMEOUT\)"


async def test_gate_timeout_counts_in_the_pool_with_its_message(db_factory) -> None:
    database = await db_factory(pool_size=3, max_overflow=0, pool_timeout=0.3)
    before = database.pool_snapshot().timeouts_total
    async with database.session() as holder:
        await holder.execute(text("INSERT INTO log (n) VALUES (1)"))
        with pytest.raises(PoolTimeout, match=BUSY_MESSAGE) as waited:
            async with database.session() as other:
                await other.execute(text("INSERT INTO log (n) VALUES (2)"))
    assert "write lock" in str(waited.value)
    assert database.pool_snapshot().timeouts_total == before + 1


def test_thread_writers_are_shed_and_time_out_like_the_pool(tmp_path: Path) -> None:
    """No event loop (``with database:``): threads queue for the gate under the sync pool's
    DB_MAX_WAITING, counters and message."""
    settings = DatabaseSettings(
        url=f"sqlite:///{tmp_path / 't.db'}",
        pool_size=3,
        max_overflow=0,
        pool_timeout=0.3,
        max_waiting=1,
    )
    with Database(settings) as database:
        sync = database.sync
        with sync.session() as session:
            session.execute(text("CREATE TABLE log (id INTEGER PRIMARY KEY, n INTEGER)"))
        errors: list[BaseException] = []

        def write(n: int) -> None:
            try:
                with sync.session() as session:
                    session.execute(text("INSERT INTO log (n) VALUES (:n)"), {"n": n})
            except BaseException as error:
                errors.append(error)

        with sync.session() as holder:
            holder.execute(text("INSERT INTO log (n) VALUES (0)"))  # holds the gate
            waiter = threading.Thread(target=write, args=(1,))
            waiter.start()
            deadline = time.monotonic() + 5
            while sync.monitor.waiting < 1:  # the waiter is queued for the gate
                assert time.monotonic() < deadline, "the writer never queued"
                time.sleep(0.005)
            write(2)  # beyond DB_MAX_WAITING: shed at once
            waiter.join(timeout=5)
        assert [type(error) for error in errors] == [TooManyWaiting, PoolTimeout]
        assert "DB_MAX_WAITING=1" in str(errors[0])
        assert re.match(BUSY_MESSAGE, str(errors[1]))
        assert sync.pool_snapshot().timeouts_total == 2
        assert sync.monitor.waiting == 0


async def test_without_the_gate_sqlite_says_database_is_locked(tmp_path: Path) -> None:
    """The failure the gate prevents, shown on a plain engine (same WAL, same busy timeout)."""
    engine = create_async_engine(
        f"sqlite+aiosqlite:///{tmp_path / 'plain.db'}", connect_args={"timeout": 0.2}
    )
    async with engine.begin() as conn:
        await conn.execute(text("PRAGMA journal_mode=WAL"))
        await conn.execute(text("CREATE TABLE counter (n INTEGER NOT NULL)"))
        await conn.execute(text("INSERT INTO counter VALUES (0)"))

    async def plain_read_then_write() -> None:
        async with engine.connect() as conn:
            await conn.exec_driver_sql("BEGIN")
            n = (await conn.execute(text("SELECT n FROM counter"))).scalar_one()
            await asyncio.sleep(0.01)
            await conn.execute(text("UPDATE counter SET n = :n"), {"n": n + 1})
            await conn.commit()

    try:
        results = await asyncio.gather(
            *(plain_read_then_write() for _ in range(20)), return_exceptions=True
        )
    finally:
        await engine.dispose()
    locked = [r for r in results if isinstance(r, OperationalError) and "locked" in str(r)]
    assert locked, "expected plain concurrent writers to hit 'database is locked'"


LOG = (
    text("INSERT INTO log (n) VALUES (:n) RETURNING id")
    .bindparams(bindparam("n"))
    .columns(id=Integer)
)


async def test_committed_writes_pass_the_gate(db_factory) -> None:
    # execute_committed runs without BEGIN IMMEDIATE, but still one writer at a time:
    # it waits for (and times out on) a transaction that holds the gate.
    database = await db_factory(pool_size=3, max_overflow=0, pool_timeout=0.3)
    gate = database.write_gate
    async with database.connection() as holder:
        await holder.all(text("UPDATE counter SET n = n + 1"))  # holds the gate
        async with database.connection() as db:
            with pytest.raises(PoolTimeout, match="DB_POOL_TIMEOUT"):
                await db.execute_committed(LOG, n=1)
    waits = gate.waits_total
    async with database.connection() as db:
        await db.execute_committed(LOG, n=2)
        assert not gate.held  # given back as soon as the statement completed
    assert gate.waits_total == waits + 1


async def test_concurrent_committed_writers_never_see_database_is_locked(db_factory) -> None:
    database = await db_factory(pool_size=5, max_overflow=0, pool_timeout=10)

    async def write(n: int) -> None:
        async with database.connection() as db:
            await db.execute_committed(LOG, n=n)

    await asyncio.gather(*(write(n) for n in range(WRITERS)))
    async with database.connection(read_only=True) as db:
        assert await db.scalar(text("SELECT count(*) FROM log").columns(n=Integer)) == WRITERS
