"""Direct connections: the fast path keeps every promise the session path makes."""

from __future__ import annotations

import asyncio
import gc
from datetime import UTC

import pytest
from sqlalchemy import bindparam, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from fastapi_dbpool import Database, DatabaseSettings
from fastapi_dbpool.errors import PoolTimeout, WriteInReadSession
from fastapi_dbpool.testing import assert_pool_idle
from tests.backends import admin_execute
from tests.conftest import make_settings
from tests.pgstat import app_sessions
from tests.polling import eventually
from users_api.models import User

GET = select(User.__table__).where(User.id == bindparam("user_id"))
BY_EMAIL = select(User.id).where(User.email == bindparam("email"))
ADD = insert(User).values(name=bindparam("name"), email=bindparam("email")).returning(User.id)


async def test_write_commits_when_the_block_ends(settings: DatabaseSettings) -> None:
    async with Database(settings) as database:
        async with database.connection() as db:
            user_id = await db.scalar(ADD, name="Ada", email="ada@x.com")
        async with database.connection(read_only=True) as db:
            row = await db.one_or_none(GET, user_id=user_id)
        assert row is not None and row["name"] == "Ada"
        # Python-side default and the UTC type decorator ran, on both backends.
        assert row["created_at"].tzinfo is UTC
        await assert_pool_idle(database)


async def test_error_rolls_back(settings: DatabaseSettings) -> None:
    async with Database(settings) as database:
        with pytest.raises(RuntimeError):
            async with database.connection() as db:
                await db.scalar(ADD, name="Bo", email="bo@x.com")
                raise RuntimeError("handler failed")
        async with database.connection(read_only=True) as db:
            assert await db.scalar(BY_EMAIL, email="bo@x.com") is None
        await assert_pool_idle(database)


async def test_driver_errors_are_sqlalchemy_errors(settings: DatabaseSettings) -> None:
    async with Database(settings) as database:
        async with database.connection() as db:
            await db.scalar(ADD, name="C", email="c@x.com")
        with pytest.raises(IntegrityError):
            async with database.connection() as db:
                await db.scalar(ADD, name="C2", email="c@x.com")
        await assert_pool_idle(database)


async def test_read_only_refuses_writes(settings: DatabaseSettings) -> None:
    async with Database(settings) as database:
        async with database.connection(read_only=True) as db:
            for statement in (ADD, update(User).values(name="x"), text("DELETE FROM users")):
                with pytest.raises(WriteInReadSession):
                    await db.all(statement)
        await assert_pool_idle(database)


async def test_statements_built_per_call_get_their_own_values(settings: DatabaseSettings) -> None:
    async with Database(settings) as database:
        async with database.connection() as db:
            a = await db.scalar(ADD, name="A", email="a@x.com")
            b = await db.scalar(ADD, name="B", email="b@x.com")
        async with database.connection(read_only=True) as db:
            # Same cache key, different literal values: each call must see its own.
            names = [await db.scalar(select(User.name).where(User.id == i)) for i in (a, b)]
        assert names == ["A", "B"]


async def test_exhausted_pool_is_pool_timeout(database_url: str) -> None:
    settings = make_settings(database_url, pool_size=1, max_overflow=0, pool_timeout=0.3)
    async with Database(settings) as database:
        async with database.connection(read_only=True) as holder:
            await holder.all(select(User.id))
            with pytest.raises(PoolTimeout):
                async with database.connection(read_only=True) as db:
                    await db.all(select(User.id))
        assert database.pool_snapshot().timeouts_total == 1
        await assert_pool_idle(database)


async def test_cancelled_write_returns_its_connection(settings: DatabaseSettings) -> None:
    async with Database(settings) as database:
        started = asyncio.Event()

        async def write_then_hang() -> None:
            async with database.connection() as db:
                await db.scalar(ADD, name="D", email="d@x.com")
                started.set()
                await asyncio.Event().wait()  # until cancelled

        task = asyncio.create_task(write_then_hang())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await assert_pool_idle(database)
        async with database.connection(read_only=True) as db:
            assert await db.scalar(BY_EMAIL, email="d@x.com") is None  # rolled back
    gc.collect()


async def test_a_newcomer_does_not_overtake_a_waiter(database_url: str) -> None:
    settings = make_settings(database_url, pool_size=1, max_overflow=0, pool_timeout=5)
    async with Database(settings) as database:
        served: list[str] = []

        async def read(name: str) -> None:
            async with database.connection(read_only=True) as db:
                await db.all(select(User.id))
                served.append(name)

        newcomer: asyncio.Task[None] | None = None
        async with database.connection(read_only=True) as holder:
            await holder.all(select(User.id))
            waiter = asyncio.create_task(read("waiter"))
            await eventually(lambda: database.pool_snapshot().waiting == 1, what="a waiter")
            # Scheduled before the connection comes back, so it runs before the woken
            # waiter: an unfair queue hands it the connection.
            newcomer = asyncio.create_task(read("newcomer"))
        await asyncio.gather(waiter, newcomer)
        assert served == ["waiter", "newcomer"]
        await assert_pool_idle(database)


@pytest.mark.postgres_only
async def test_connection_killed_by_the_server_is_replaced(settings: DatabaseSettings) -> None:
    async with Database(settings) as database:
        async with database.connection(read_only=True) as db:
            await db.all(select(User.id))
        name = settings.sqlalchemy_url.database
        url = settings.sqlalchemy_url.render_as_string(hide_password=False)
        assert app_sessions(url) == ["idle"]
        admin_execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"
        )
        await eventually(lambda: app_sessions(url) == [], what="the backend terminated")
        # Within DB_POOL_PRE_PING_IDLE_S, so no ping: the dead connection is noticed
        # (closed, or failing its first statement) and the read still succeeds.
        async with database.connection(read_only=True) as db:
            assert await db.all(select(User.id)) == []
        assert database.pool_snapshot().invalidations_total >= 1
        await assert_pool_idle(database)


async def test_checkin_closes_an_overflow_connection_and_keeps_the_others(
    database_url: str,
) -> None:
    """The checkin without a greenlet is taken only where it does no I/O.

    An overflow connection must be closed when it comes back (I/O: through the
    greenlet); a pooled one goes back to the queue on the spot. Both with a ``reset``
    listener installed too, which forces every checkin through the greenlet.
    """
    from sqlalchemy import event

    settings = make_settings(database_url, pool_size=1, max_overflow=1)
    for with_reset_listener in (False, True):
        resets: list[object] = []
        async with Database(settings) as database:
            if with_reset_listener:
                pool = database.engine.sync_engine.pool
                event.listen(pool, "reset", lambda *args, seen=resets: seen.append(args))
            opened = database.pool_snapshot().connects_total
            async with database.connection(read_only=True) as first:
                await first.scalar(select(1))
                async with database.connection(read_only=True) as second:
                    await second.scalar(select(1))
                    assert database.pool_snapshot().overflow == 1
            snapshot = database.pool_snapshot()
            assert (snapshot.checked_out, snapshot.overflow, snapshot.idle) == (0, 0, 1)
            assert snapshot.connects_total == opened + 2
            # The one kept is reused, not reopened.
            async with database.connection(read_only=True) as again:
                await again.scalar(select(1))
            assert database.pool_snapshot().connects_total == opened + 2
            await assert_pool_idle(database)
        assert bool(resets) == with_reset_listener


async def test_a_default_it_cannot_compute_says_what_to_write(settings: DatabaseSettings) -> None:
    """A default that reads its execution context: a misuse error, not a 500 of NotImplemented."""
    from sqlalchemy import Column, Integer, MetaData, Table

    from fastapi_dbpool.errors import DirectConnectionMisuse

    metadata = MetaData()
    table = Table(
        "direct_context_defaults",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("a", Integer),
        Column("twice", Integer, default=lambda context: 2 * context.get_current_parameters()["a"]),
        Column("one", Integer, default=lambda: 1),  # no context: computed as before
    )
    async with Database(settings) as database:
        async with database.engine.begin() as connection:
            await connection.run_sync(metadata.create_all)
        try:
            with pytest.raises(DirectConnectionMisuse) as misuse:
                async with database.connection() as db:
                    await db.all(insert(table).values(a=bindparam("a")), a=1)
            message = str(misuse.value)
            assert "'twice'" in message
            assert ".values(twice=...)" in message and "server_default=" in message
            async with database.connection() as db:  # given explicitly, it runs
                await db.all(insert(table).values(a=1, twice=2))
            async with database.connection(read_only=True) as db:
                assert await db.all(select(table.c.a, table.c.twice, table.c.one)) == [
                    {"a": 1, "twice": 2, "one": 1}
                ]
        finally:
            async with database.engine.begin() as connection:
                await connection.run_sync(metadata.drop_all)
        await assert_pool_idle(database)


async def test_onupdate_runs_on_update(settings: DatabaseSettings) -> None:
    """An UPDATE gets the column's onupdate=, not its insert default (nor NULL)."""
    from sqlalchemy import Column, Integer, MetaData, Table

    metadata = MetaData()
    table = Table(
        "direct_onupdate",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("a", Integer),
        Column("version", Integer, default=1, onupdate=lambda: 2),
        Column("touched", Integer, onupdate=lambda: 3),
    )
    async with Database(settings) as database:
        async with database.engine.begin() as connection:
            await connection.run_sync(metadata.create_all)
        try:
            async with database.connection() as db:
                await db.all(insert(table).values(a=1))
            async with database.connection(read_only=True) as db:
                assert await db.one_or_none(select(table.c.version, table.c.touched)) == {
                    "version": 1,
                    "touched": None,
                }
            async with database.connection() as db:
                await db.all(update(table).values(a=2))
            async with database.connection(read_only=True) as db:
                assert await db.one_or_none(select(table.c.version, table.c.touched)) == {
                    "version": 2,
                    "touched": 3,
                }
        finally:
            async with database.engine.begin() as connection:
                await connection.run_sync(metadata.drop_all)
        await assert_pool_idle(database)
