"""A task cancelled at any point leaves no connection checked out and no open transaction.

Cancellation reaches a request when its client disconnects (and the server cancels
it), when a request timeout fires, or when the server shuts down. Each test cancels a
task at one point of a session's life, then checks that

* every connection is back in the pool (the pool's own count),
* on PostgreSQL, no server session of the app is left ``idle in transaction`` and no
  cancelled statement still runs,
* the pool serves the next session,
* no "non-checked-in connection" warning is raised (pytest turns warnings into errors
  and the fixture collects garbage at the end).
"""

from __future__ import annotations

import asyncio
import gc
import random
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import Select, event, func, insert, literal, select, text
from sqlalchemy.engine import Connection

from fastapi_dbpool import Database
from fastapi_dbpool.testing import assert_pool_idle
from tests.conftest import make_settings
from tests.pgstat import app_sessions
from tests.pressure_app import SQLITE_SLOW_QUERY, create_app, started, until
from tests.pressure_app import slow_select as pressure_slow_select
from users_api.models import User, utcnow


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    settings = make_settings(database_url, pool_size=2, max_overflow=0, pool_timeout=5)
    async with Database(settings) as database:
        yield database
        await assert_clean(database)
    gc.collect()


async def assert_clean(database: Database) -> None:
    """Nothing checked out, nothing open on the server, and the pool still serves."""
    await assert_pool_idle(database, timeout=10)
    if database.settings.backend == "postgresql":
        url = database.settings.sqlalchemy_url.render_as_string(hide_password=False)
        # The cancelled statement must be gone too, not left running on the server.
        await until(lambda: all(s == "idle" for s in app_sessions(url)), timeout=10)
    async with database.session() as session:
        assert (await session.execute(text("SELECT 1"))).scalar_one() == 1
    await assert_pool_idle(database)


async def cancel_when(task: asyncio.Task[object], ready: Awaitable[object]) -> None:
    """Cancel *task* once *ready* is done, and wait until the task has ended."""
    await ready
    assert not task.done(), "the task ended before it could be cancelled"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# A function of ours that SQLite calls as the slow statement starts counting.
SQLITE_SIGNAL = "dbpool_test_running"


class SlowStatement:
    """A statement that runs for a minute or more, and a way to know it is running.

    Longer than any wait of the tests: if it still runs when they look, it was not
    stopped by the cancellation. No lock waits: pg_sleep on PostgreSQL, a recursive
    count on SQLite. :meth:`running` waits until the database executes it: the server
    shows the app's session ``active`` (PostgreSQL), or the count has called
    :data:`SQLITE_SIGNAL` (SQLite, registered on every connection the pool opens from
    now on), so a cancellation lands mid-statement, not before it was sent.
    """

    def __init__(self, database: Database) -> None:
        self.database = database
        self.postgres = database.settings.backend == "postgresql"
        self._signalled = threading.Event()  # set in aiosqlite's thread
        if not self.postgres:
            event.listen(database.engine.sync_engine, "connect", self._register)

    def _register(self, dbapi_connection: Any, record: object) -> None:
        dbapi_connection.create_function(SQLITE_SIGNAL, 0, self._signal)

    def _signal(self) -> int:
        self._signalled.set()
        return 1

    def text(self) -> tuple[str, dict[str, object]]:
        """The statement as SQL text and its parameters, for sessions."""
        if self.postgres:
            return "SELECT pg_sleep(60)", {}
        anchored = SQLITE_SLOW_QUERY.replace("SELECT 1 UNION", f"SELECT {SQLITE_SIGNAL}() UNION")
        assert anchored != SQLITE_SLOW_QUERY
        return anchored, {"n": 100_000_000}

    def select(self) -> Select[Any]:
        """The statement in Core, for direct connections (which take no ``text()``)."""
        if self.postgres:
            return pressure_slow_select("postgresql", 60)
        numbers = select(getattr(func, SQLITE_SIGNAL)().label("x")).cte("c", recursive=True)
        numbers = numbers.union_all(select(numbers.c.x + 1).where(numbers.c.x < literal(10**8)))
        return select(func.count()).select_from(numbers)

    async def running(self) -> None:
        """Wait until the database runs the statement; fail after 10 s."""
        if self.postgres:
            url = self.database.settings.sqlalchemy_url.render_as_string(hide_password=False)
            await until(lambda: "active" in app_sessions(url), timeout=10)
        else:
            await until(self._signalled.is_set, timeout=10)


@pytest.fixture
def slow(db: Database) -> SlowStatement:
    """The slow statement, set up before the test's first connection."""
    return SlowStatement(db)


async def users(database: Database) -> int:
    async with database.session(read_only=True) as session:
        return int(await session.scalar(select(func.count()).select_from(User)) or 0)


async def test_cancelled_while_waiting_for_a_connection(db: Database) -> None:
    release = asyncio.Event()

    async def hold() -> None:
        async with db.session(read_only=True) as session:
            await session.execute(text("SELECT 1"))
            await release.wait()

    holders = [asyncio.create_task(hold()) for _ in range(2)]
    await until(lambda: db.pool_snapshot().checked_out == 2)
    victim = asyncio.create_task(hold())
    await cancel_when(victim, until(lambda: db.pool_snapshot().waiting == 1))
    assert db.pool_snapshot().waiting == 0
    # The cancelled waiter took no connection with it: both holders' come back.
    release.set()
    await asyncio.gather(*holders)


@pytest.mark.parametrize("read_only", [False, True], ids=["write", "read"])
async def test_cancelled_mid_query(db: Database, slow: SlowStatement, read_only: bool) -> None:
    statement, params = slow.text()

    async def query() -> None:
        async with db.session(read_only=read_only) as session:
            await session.execute(text(statement), params)

    await cancel_when(asyncio.create_task(query()), slow.running())


async def test_cancelled_between_statements(db: Database) -> None:
    flushed = asyncio.Event()

    async def work() -> None:
        async with db.session() as session:
            session.add(User(name="x", email="x@x.com"))
            await session.flush()
            flushed.set()
            await asyncio.Event().wait()  # until cancelled

    await cancel_when(asyncio.create_task(work()), flushed.wait())
    assert await users(db) == 0  # rolled back


async def assert_all_cancelled_in_time(
    tasks: list[asyncio.Task[None]], slow: Callable[[int], bool]
) -> None:
    """Every task ends within seconds, cancelled or done; the *slow* ones cancelled.

    A slow task runs a statement longer than the test: if it completes, or the tasks
    outlast the bound, a cancellation was lost somewhere (swallowed by a wait).
    """
    async with asyncio.timeout(20):
        results = await asyncio.gather(*tasks, return_exceptions=True)
    for n, result in enumerate(results):
        if slow(n):
            assert isinstance(result, asyncio.CancelledError), (n, result)
        else:
            assert result is None or isinstance(result, asyncio.CancelledError), (n, result)


def cancel_on(database: Database, event_name: str) -> Callable[[asyncio.Task[object]], None]:
    """Arrange for *task* to be cancelled when the engine emits *event_name*.

    The event fires just before the driver's COMMIT or ROLLBACK is sent, so the
    cancellation lands while that call is in flight.
    """
    victims: list[asyncio.Task[object]] = []

    def on_event(conn: Connection) -> None:
        if victims:
            victims.pop().cancel()

    event.listen(database.engine.sync_engine, event_name, on_event)
    return victims.append


async def test_cancelled_during_commit(db: Database) -> None:
    arm = cancel_on(db, "commit")

    async def work() -> None:
        async with db.session() as session:
            session.add(User(name="x", email="x@x.com"))
            await session.flush()
            arm(asyncio.current_task())  # type: ignore[arg-type]

    task = asyncio.create_task(work())
    with pytest.raises(asyncio.CancelledError):
        await task
    # The commit runs to completion in a task of its own: the data is saved.
    await assert_pool_idle(db)
    assert await users(db) == 1


async def test_cancelled_during_rollback(db: Database) -> None:
    arm = cancel_on(db, "rollback")

    async def work() -> None:
        async with db.session() as session:
            session.add(User(name="x", email="x@x.com"))
            await session.flush()
            arm(asyncio.current_task())  # type: ignore[arg-type]
            raise RuntimeError("the handler failed")

    task = asyncio.create_task(work())
    with pytest.raises((asyncio.CancelledError, RuntimeError)):
        await task
    await assert_pool_idle(db)
    assert await users(db) == 0


@pytest.mark.slow
async def test_cancelled_at_random_points(db: Database, slow: SlowStatement) -> None:
    """Many tasks cancelled at random moments of a read-write unit of work.

    The random delays are the test, not synchronisation: they scatter the
    cancellations over every point of the work.
    """
    rng = random.Random(20260427)
    statement, params = slow.text()

    async def work(n: int) -> None:
        async with db.session() as session:
            session.add(User(name="r", email=f"r{n}@x.com"))
            await session.flush()
            await session.execute(select(func.count()).select_from(User))
            if n % 5 == 0:
                await session.execute(text(statement), params)

    tasks = []
    for n in range(60):
        task = asyncio.create_task(work(n))
        tasks.append(task)
        asyncio.get_running_loop().call_later(rng.uniform(0, 0.05), task.cancel)
        await asyncio.sleep(rng.uniform(0, 0.01))
    await assert_all_cancelled_in_time(tasks, slow=lambda n: n % 5 == 0)


async def test_request_timeout_mid_query_is_504_and_leaks_nothing(database_url: str) -> None:
    settings = make_settings(database_url, pool_size=1, max_overflow=0, pool_timeout=5)
    app = create_app(settings, request_timeout=0.3)
    async with started(app) as client:
        response = await client.get("/slow?seconds=5")
        assert response.status_code == 504
        await assert_clean(app.state.fastapi_dbpool)
        assert (await client.get("/quick")).status_code == 200


@pytest.mark.parametrize("read_only", [False, True], ids=["write", "read"])
async def test_direct_connection_cancelled_mid_query(
    db: Database, slow: SlowStatement, read_only: bool
) -> None:
    statement = slow.select()

    async def query() -> None:
        async with db.connection(read_only=read_only) as conn:
            await conn.all(statement)

    await cancel_when(asyncio.create_task(query()), slow.running())


async def test_direct_connection_cancelled_between_statements(db: Database) -> None:
    inserted = asyncio.Event()

    async def work() -> None:
        async with db.connection() as conn:
            await conn.all(insert(User).values(name="x", email="x@x.com", created_at=utcnow()))
            inserted.set()
            await asyncio.Event().wait()  # until cancelled

    await cancel_when(asyncio.create_task(work()), inserted.wait())
    assert await users(db) == 0  # rolled back


@pytest.mark.slow
async def test_direct_connection_cancelled_at_random_points(
    db: Database, slow: SlowStatement
) -> None:
    rng = random.Random(20260428)
    slow_select = slow.select()

    async def work(n: int) -> None:
        async with db.connection(read_only=n % 2 == 0) as conn:
            if n % 2:
                await conn.all(
                    insert(User).values(name="r", email=f"d{n}@x.com", created_at=utcnow())
                )
            await conn.all(select(func.count()).select_from(User))
            if n % 5 == 0:
                await conn.all(slow_select)

    tasks = []
    for n in range(60):
        task = asyncio.create_task(work(n))
        tasks.append(task)
        asyncio.get_running_loop().call_later(rng.uniform(0, 0.05), task.cancel)
        await asyncio.sleep(rng.uniform(0, 0.01))
    await assert_all_cancelled_in_time(tasks, slow=lambda n: n % 5 == 0)
