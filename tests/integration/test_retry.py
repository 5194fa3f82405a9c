"""Transaction retry: a unit of work that lost a race runs again, and only then.

Real races on PostgreSQL (two SERIALIZABLE transactions that conflict, two transactions
locking rows in opposite order), handled by ``retry_transaction`` on the handler: both
requests succeed. A failure that repeats (a deferred trigger raising 40001 at every
COMMIT) ends in the 503 after the retries; one that is not transient is never retried.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Annotated

import httpx
import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from fastapi_dbpool import Database, DatabaseSettings, SessionDep
from fastapi_dbpool.request.retry import RetryPolicy, Transaction
from fastapi_dbpool.testing import assert_pool_idle
from tests.conftest import make_settings
from tests.integration.faultapp import (
    Rendezvous,
    Row,
    create_tables,
    drop_tables,
    fault_client,
)


@pytest.fixture
def fault_settings(database_url: str) -> Iterator[DatabaseSettings]:
    settings = make_settings(database_url, pool_size=4, max_overflow=0, pool_timeout=5)
    create_tables(settings)
    yield settings
    drop_tables(settings)


@pytest.fixture
def meeting() -> Rendezvous:
    return Rendezvous()


@pytest.fixture
async def client(
    fault_settings: DatabaseSettings, meeting: Rendezvous
) -> AsyncIterator[httpx.AsyncClient]:
    async with fault_client(fault_settings, meeting) as client:
        yield client


@pytest.mark.postgres_only
async def test_conflicting_serializable_handlers_both_succeed(
    client: httpx.AsyncClient, meeting: Rendezvous, backend: str
) -> None:
    first, second = await asyncio.gather(
        client.post("/retry/serializable/1"), client.post("/retry/serializable/2")
    )
    assert [first.status_code, second.status_code] == [200, 200], (first.text, second.text)
    assert meeting.calls["serializable"] >= 3  # one of them ran again


@pytest.mark.postgres_only
async def test_deadlocked_handlers_both_succeed(
    client: httpx.AsyncClient, meeting: Rendezvous, backend: str
) -> None:
    first, second = await asyncio.gather(
        client.post("/retry/lock/1/2"), client.post("/retry/lock/2/1")
    )
    assert [first.status_code, second.status_code] == [200, 200], (first.text, second.text)
    assert meeting.calls["lock"] == 3  # the deadlock's victim ran again, once
    assert meeting.database is not None
    assert meeting.database.pool_snapshot().retries_total == 1  # dbpool_transaction_retries_total


@pytest.mark.postgres_only
async def test_failure_that_repeats_is_a_503_after_the_retries(
    client: httpx.AsyncClient, meeting: Rendezvous, backend: str
) -> None:
    response = await client.post("/retry/fault", params={"code": "40001"})
    assert response.status_code == 503
    assert response.json()["code"] == "serialization_failure"
    assert response.headers["retry-after"] == "1"
    assert meeting.calls["fault"] == 4  # the first attempt and 3 retries


async def test_failure_that_is_not_transient_is_not_retried(
    client: httpx.AsyncClient, meeting: Rendezvous, backend: str
) -> None:
    # PostgreSQL: 23514 at COMMIT; SQLite: the trigger's abort at the INSERT.
    code = "23514" if backend == "postgres" else "x"
    response = await client.post("/retry/fault", params={"code": code})
    assert response.status_code == 409
    assert meeting.calls["fault"] == 1


# -- background work: Database.transaction -------------------------------------------


@pytest.fixture
async def database(fault_settings: DatabaseSettings) -> AsyncIterator[Database]:
    async with Database(fault_settings) as database:
        yield database
        await assert_pool_idle(database)


@pytest.mark.postgres_only
async def test_background_unit_runs_again_until_it_commits(
    database: Database, backend: str
) -> None:
    calls = 0

    @database.transaction(retries=5, backoff_s=0.01)
    async def add(session, fail_times: int) -> int:
        nonlocal calls
        calls += 1
        session.add(Row(n=7, fault="40P01" if calls <= fail_times else None))
        return calls

    assert await add(2) == 3
    assert database.pool_snapshot().retries_total == 2
    async with database.session(read_only=True) as session:
        assert await session.scalar(select(func.count()).where(Row.n == 7)) == 1


@pytest.mark.postgres_only
async def test_total_time_is_bounded(database: Database, backend: str) -> None:
    policy = RetryPolicy(retries=1000, backoff_s=0.05, max_backoff_s=0.2, max_seconds=1.0)
    started = time.monotonic()
    attempts = 0
    with pytest.raises(DBAPIError) as raised:
        async for attempt in Transaction(database, policy):
            async with attempt as session:
                attempts += 1
                session.add(Row(n=0, fault="40001"))
    elapsed = time.monotonic() - started
    assert "40001" in str(raised.value.orig.sqlstate)
    assert 1.0 * 0.5 < elapsed < 3.0, elapsed
    assert 2 < attempts < 1000


async def test_block_form_and_its_limits(database: Database) -> None:
    async for attempt in Transaction(database, RetryPolicy(retries=2)):
        async with attempt as session:
            await session.execute(text("UPDATE dbpool_fault SET n = n + 1 WHERE id = 1"))
    with pytest.raises(IntegrityError):  # not transient: raised at the first attempt
        async for attempt in Transaction(database, RetryPolicy(retries=2)):
            async with attempt as session:
                await session.execute(text("INSERT INTO dbpool_fault (id, n) VALUES (1, 0)"))
    with pytest.raises(TypeError, match="cannot re-run its block"):
        async with Transaction(database, RetryPolicy(retries=2)):
            pass
    async with Transaction(database, RetryPolicy(retries=0)) as session:
        assert await session.scalar(text("SELECT n FROM dbpool_fault WHERE id = 1")) == 1


async def test_plain_context_manager_runs_the_block_once(database: Database) -> None:
    # As SQLAlchemy's `async with engine.begin()`: the default form just works, once.
    async with database.transaction() as session:
        await session.execute(text("UPDATE dbpool_fault SET n = n + 1 WHERE id = 1"))
    async with database.transaction(read_only=True) as session:
        assert await session.scalar(text("SELECT n FROM dbpool_fault WHERE id = 1")) == 1
    # Retries asked for explicitly cannot be honoured by a block: said, not ignored.
    with pytest.raises(TypeError, match=r"async for attempt in database\.transaction"):
        async with database.transaction(retries=5):
            pass


async def _session_through(session: SessionDep) -> AsyncSession:
    return session  # a repository or service object holding the request's session


ThroughDep = Annotated[AsyncSession, Depends(_session_through)]


async def test_retried_handler_with_its_session_only_in_a_sub_dependency_stops_the_start(
    fault_settings: DatabaseSettings,
) -> None:
    app = FastAPI()
    Database(fault_settings).install(app)

    @app.post("/bump")
    @Database.retrying(retries=2)
    async def bump(repo: ThroughDep) -> dict[str, bool]:
        await repo.execute(text("UPDATE dbpool_fault SET n = n + 1 WHERE id = 1"))
        return {"ok": True}

    with pytest.raises(TypeError, match=r"/bump: bump\(\).*repo.*`session: SessionDep`"):
        async with app.router.lifespan_context(app):
            pass


async def test_retried_handler_that_also_takes_the_session_starts_and_commits(
    fault_settings: DatabaseSettings,
) -> None:
    # What the error says to write: the handler's own parameter is the same session.
    app = FastAPI()
    Database(fault_settings).install(app)

    @app.post("/bump")
    @Database.retrying(retries=2)
    async def bump(repo: ThroughDep, session: SessionDep) -> dict[str, bool]:
        assert repo is session
        await repo.execute(text("UPDATE dbpool_fault SET n = n + 1 WHERE id = 1"))
        return {"ok": True}

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            assert (await client.post("/bump")).status_code == 200
        database = app.state.fastapi_dbpool
        async with database.session(read_only=True) as session:
            assert await session.scalar(text("SELECT n FROM dbpool_fault WHERE id = 1")) == 1
        await assert_pool_idle(database)
