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
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from sqlalchemy import Select, event, func, insert, literal, select, text
from sqlalchemy.engine import Connection

from fastapi_dbpool import Database
from fastapi_dbpool.testing import assert_pool_idle
from tests.conftest import make_settings
from tests.pgstat import app_sessions
from tests.pressure_app import SQLITE_SLOW_QUERY, create_app, started, until
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


async def cancel_after(task: asyncio.Task[object], seconds: float) -> None:
    """Cancel *task* after *seconds* and wait until it has ended."""
    await asyncio.sleep(seconds)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def slow_statement(database: Database) -> tuple[str, dict[str, object]]:
    """A statement that runs for a minute or more, without waiting on a lock.

    Longer than any wait of the tests: if it still runs when they look, it was not
    stopped by the cancellation.
    """
    if database.settings.backend == "postgresql":
        return "SELECT pg_sleep(60)", {}
    return SQLITE_SLOW_QUERY, {"n": 100_000_000}


async def users(database: Database) -> int:
    async with database.session(read_only=True) as session:
        return int(await session.scalar(select(func.count()).select_from(User)) or 0)


async def test_cancelled_while_waiting_for_a_connection(db: Database) -> None:
    async def hold(seconds: float) -> None:
        async with db.session(read_only=True) as session:
            await session.execute(text("SELECT 1"))
            await asyncio.sleep(seconds)

    holders = [asyncio.create_task(hold(0.5)) for _ in range(2)]
    await until(lambda: db.pool_snapshot().checked_out == 2)
    victim = asyncio.create_task(hold(0))
    await until(lambda: db.pool_snapshot().waiting == 1)
    await cancel_after(victim, 0.05)
    assert db.pool_snapshot().waiting == 0
    await asyncio.gather(*holders)


@pytest.mark.parametrize("read_only", [False, True], ids=["write", "read"])
async def test_cancelled_mid_query(db: Database, read_only: bool) -> None:
    statement, params = slow_statement(db)

    async def query() -> None:
        async with db.session(read_only=read_only) as session:
            await session.execute(text(statement), params)

    await cancel_after(asyncio.create_task(query()), 0.3)


async def test_cancelled_between_statements(db: Database) -> None:
    async def work() -> None:
        async with db.session() as session:
            session.add(User(name="x", email="x@x.com"))
            await session.flush()
            await asyncio.sleep(5)

    await cancel_after(asyncio.create_task(work()), 0.3)
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
async def test_cancelled_at_random_points(db: Database) -> None:
    """Many tasks cancelled at random moments of a read-write unit of work."""
    rng = random.Random(20260427)
    statement, params = slow_statement(db)

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


def slow_select(database: Database) -> Select[Any]:
    """A Core select that runs for seconds, for direct connections (which take no text())."""
    if database.settings.backend == "postgresql":
        return select(func.pg_sleep(60))
    numbers = select(literal(1).label("x")).cte("c", recursive=True)
    numbers = numbers.union_all(select(numbers.c.x + 1).where(numbers.c.x < 100_000_000))
    return select(func.count()).select_from(numbers)


@pytest.mark.parametrize("read_only", [False, True], ids=["write", "read"])
async def test_direct_connection_cancelled_mid_query(db: Database, read_only: bool) -> None:
    statement = slow_select(db)

    async def query() -> None:
        async with db.connection(read_only=read_only) as conn:
            await conn.all(statement)

    await cancel_after(asyncio.create_task(query()), 0.3)


async def test_direct_connection_cancelled_between_statements(db: Database) -> None:
    async def work() -> None:
        async with db.connection() as conn:
            await conn.all(insert(User).values(name="x", email="x@x.com", created_at=utcnow()))
            await asyncio.sleep(5)

    await cancel_after(asyncio.create_task(work()), 0.3)
    assert await users(db) == 0  # rolled back


@pytest.mark.slow
async def test_direct_connection_cancelled_at_random_points(db: Database) -> None:
    rng = random.Random(20260428)
    slow = slow_select(db)

    async def work(n: int) -> None:
        async with db.connection(read_only=n % 2 == 0) as conn:
            if n % 2:
                await conn.all(
                    insert(User).values(name="r", email=f"d{n}@x.com", created_at=utcnow())
                )
            await conn.all(select(func.count()).select_from(User))
            if n % 5 == 0:
                await conn.all(slow)

    tasks = []
    for n in range(60):
        task = asyncio.create_task(work(n))
        tasks.append(task)
        asyncio.get_running_loop().call_later(rng.uniform(0, 0.05), task.cancel)
        await asyncio.sleep(rng.uniform(0, 0.01))
    await assert_all_cancelled_in_time(tasks, slow=lambda n: n % 5 == 0)
