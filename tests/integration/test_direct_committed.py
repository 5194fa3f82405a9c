"""execute_committed: one statement, its own transaction, one round trip; promises intact."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest
from sqlalchemy import bindparam, func, insert, select
from sqlalchemy.exc import IntegrityError

from fastapi_dbpool import Database, DatabaseSettings
from fastapi_dbpool.errors import TransactionOpen, WriteInReadSession
from fastapi_dbpool.testing import assert_pool_idle
from tests.integration.sessionapp import Child, create_tables, drop_tables
from users_api.models import User

ADD = insert(User).values(name=bindparam("name"), email=bindparam("email")).returning(User.id)
COUNT = select(func.count()).select_from(User).where(User.email == bindparam("email"))
ORPHAN = insert(Child).values(parent_id=bindparam("parent_id")).returning(Child.id)


@pytest.fixture
def child_table(settings: DatabaseSettings) -> Iterator[None]:
    create_tables(settings)
    yield
    drop_tables(settings)


async def test_committed_before_the_block_ends(settings: DatabaseSettings) -> None:
    async with Database(settings) as database:
        checkouts = database.pool_snapshot().checkouts_total
        async with database.connection() as db:
            (row,) = await db.execute_committed(ADD, name="Ada", email="ada@x.com")
            # Another connection sees the row while this block is still open.
            async with database.connection(read_only=True) as other:
                assert await other.scalar(COUNT, email="ada@x.com") == 1
        assert isinstance(row["id"], int)
        # The pool's events saw both checkouts, so the monitor and metrics do too.
        assert database.pool_snapshot().checkouts_total == checkouts + 2
        await assert_pool_idle(database)


async def test_failed_commit_raises_and_writes_nothing(
    settings: DatabaseSettings, child_table: None
) -> None:
    # The foreign key is deferred: the INSERT itself passes, its commit fails. A handler
    # must see the error (409), not rows it could answer 2xx with.
    async with Database(settings) as database:
        async with database.connection() as db:
            with pytest.raises(IntegrityError):
                await db.execute_committed(ORPHAN, parent_id=424242)
        async with database.connection(read_only=True) as db:
            assert await db.scalar(select(func.count()).select_from(Child)) == 0
        await assert_pool_idle(database)


async def test_unique_violation_is_integrity_error_and_the_connection_stays_usable(
    settings: DatabaseSettings,
) -> None:
    async with Database(settings) as database:
        async with database.connection() as db:
            await db.execute_committed(ADD, name="B", email="b@x.com")
            with pytest.raises(IntegrityError):
                await db.execute_committed(ADD, name="B2", email="b@x.com")
            await db.execute_committed(ADD, name="C", email="c@x.com")
        async with database.connection(read_only=True) as db:
            assert await db.scalar(COUNT, email="b@x.com") == 1
            assert await db.scalar(COUNT, email="c@x.com") == 1
        assert database.pool_snapshot().invalidations_total == 0
        await assert_pool_idle(database)


async def test_a_later_error_keeps_the_committed_statement(settings: DatabaseSettings) -> None:
    async with Database(settings) as database:
        with pytest.raises(RuntimeError):
            async with database.connection() as db:
                await db.execute_committed(ADD, name="D", email="d@x.com")
                await db.all(ADD, name="E", email="e@x.com")  # opens a transaction
                raise RuntimeError("handler failed")
        async with database.connection(read_only=True) as db:
            assert await db.scalar(COUNT, email="d@x.com") == 1
            assert await db.scalar(COUNT, email="e@x.com") == 0  # rolled back
        await assert_pool_idle(database)


async def test_refused_inside_a_transaction_and_on_read_only(settings: DatabaseSettings) -> None:
    async with Database(settings) as database:
        with pytest.raises(TransactionOpen):
            async with database.connection() as db:
                await db.all(ADD, name="F", email="f@x.com")
                await db.execute_committed(ADD, name="G", email="g@x.com")
        async with database.connection(read_only=True) as db:
            with pytest.raises(WriteInReadSession):
                await db.execute_committed(ADD, name="H", email="h@x.com")
            assert await db.scalar(COUNT, email="f@x.com") == 0
        await assert_pool_idle(database)


async def test_cancelled_mid_statement_returns_its_connection(settings: DatabaseSettings) -> None:
    # The blocked INSERT waits on the holder's uncommitted row (PostgreSQL's unique
    # index), holding a connection, or on the write gate (SQLite), holding none yet;
    # cancelling it must not leak the connection.
    async with Database(settings) as database:
        gate = database.write_gate
        async with database.connection() as holder:
            await holder.all(ADD, name="K", email="k@x.com")
            blocked = asyncio.create_task(_committed(database, "k@x.com"))
            while (  # noqa: ASYNC110 - polls a gauge
                database.pool_snapshot().checked_out < 2 if gate is None else gate.waiting < 1
            ):
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)
            blocked.cancel()
            with pytest.raises(asyncio.CancelledError):
                await blocked
            assert database.pool_snapshot().checked_out == 1
        async with database.connection(read_only=True) as db:
            assert await db.scalar(COUNT, email="k@x.com") == 1
        await assert_pool_idle(database)
    gc.collect()


async def _committed(database: Database, email: str) -> None:
    async with database.connection() as db:
        await db.execute_committed(ADD, name="L", email=email)
