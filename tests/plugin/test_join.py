"""Direct connections on a joined test connection (``Database.join``), on both databases.

Writes run in savepoints of the test's transaction: visible inside it, gone after its
rollback, and nothing is checked out of the pool meanwhile.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from sqlalchemy import bindparam, func, insert, select
from sqlalchemy.exc import IntegrityError

from fastapi_dbpool import Database, DatabaseSettings
from fastapi_dbpool.pytest_plugin import _joined
from users_api.models import User

ADD = insert(User).values(name=bindparam("name"), email=bindparam("email")).returning(User.id)
EMAILS = select(User.email).order_by(User.email)
COUNT = select(func.count()).select_from(User)


@asynccontextmanager
async def joined(settings: DatabaseSettings) -> AsyncIterator[Database]:
    """A started database joined to a test transaction, as the plugin's client does."""
    async with Database(settings) as database, _joined(database):
        yield database


async def emails(database: Database) -> list[str]:
    async with database.connection(read_only=True) as db:
        return [row["email"] for row in await db.all(EMAILS)]


async def test_committed_write_is_visible_inside_and_gone_after(
    settings: DatabaseSettings,
) -> None:
    async with joined(settings) as database:
        checkouts = database.monitor.snapshot().checkouts_total
        async with database.connection() as db:
            await db.execute_committed(ADD, name="A", email="a@x.com")
        async with database.connection() as db:  # a unit committed when it ends
            await db.all(ADD, name="B", email="b@x.com")
            await db.all(ADD, name="C", email="c@x.com")
        assert await emails(database) == ["a@x.com", "b@x.com", "c@x.com"]
        async with database.session(read_only=True) as session:  # sessions see them too
            assert await session.scalar(COUNT) == 3
        # Everything ran on the test's connection: nothing checked out of the pool.
        assert database.monitor.snapshot().checkouts_total == checkouts
        assert database.joined_units.open == 0
    async with Database(settings) as database:
        assert await emails(database) == []


async def test_error_rolls_back_only_its_savepoint(settings: DatabaseSettings) -> None:
    async with joined(settings) as database:
        async with database.connection() as db:
            await db.execute_committed(ADD, name="A", email="a@x.com")
        with pytest.raises(RuntimeError):
            async with database.connection() as db:
                await db.all(ADD, name="B", email="b@x.com")
                raise RuntimeError("the handler fails")
        # A failed statement (on PostgreSQL it aborts the transaction) is undone to its
        # savepoint; the test's transaction goes on.
        with pytest.raises(IntegrityError):
            async with database.connection() as db:
                await db.execute_committed(ADD, name="A2", email="a@x.com")
        with pytest.raises(IntegrityError):
            async with database.connection() as db:
                await db.all(ADD, name="C", email="c@x.com")
                await db.all(ADD, name="A3", email="a@x.com")
        async with database.connection() as db:
            await db.all(ADD, name="D", email="d@x.com")
        assert await emails(database) == ["a@x.com", "d@x.com"]


async def test_units_left_open_are_counted(settings: DatabaseSettings) -> None:
    async with joined(settings) as database:
        units = database.joined_units
        direct = database.connection()
        db = await direct.__aenter__()
        await db.all(ADD, name="A", email="a@x.com")
        session_unit = database.session()
        session = await session_unit.__aenter__()
        await session.scalar(COUNT)
        assert units.open == 2
        assert units.describe() == "1 connection, 1 session"
        await session_unit.__aexit__(None, None, None)
        await direct.__aexit__(None, None, None)
        assert units.open == 0
