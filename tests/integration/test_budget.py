"""Server facts from real databases, and the budget check the app runs at start-up."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator

import psycopg
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.engine import make_url

from fastapi_dbpool import Database, DatabaseSettings, SessionDep, SyncSessionDep
from fastapi_dbpool.errors import ConnectFailed
from fastapi_dbpool.ops.budget import inspect_server
from fastapi_dbpool.ops.startup_check import check_budget
from tests.backends import admin_execute, libpq_url
from tests.conftest import _lifespan_client
from tests.servers import free_port

CANARY = "CANARY-b7f3e1"


def budget_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "fastapi_dbpool" and r.getMessage().startswith("connection budget")
    ]


async def finished_check(database: Database) -> None:
    task = database._budget_check
    assert task is not None, "no budget check was started"
    await asyncio.wait_for(asyncio.shield(task), timeout=15)


async def test_inspect_server_reports_the_servers_facts(database_url: str, backend: str) -> None:
    name = f"t{uuid.uuid4().hex[:8]}"
    database = Database(DatabaseSettings(url=database_url, sqlite_busy_timeout_ms=1234), name=name)
    if backend == "sqlite":
        facts = await inspect_server(database)
        assert (facts.product, facts.sqlite_exists) == ("SQLite", True)
        assert facts.journal_mode == "wal"
        assert facts.busy_timeout_ms == 1234  # the app's own pragma, not sqlite3's default
        assert facts.foreign_keys is True
        assert facts.max_connections is None
        return
    conninfo = libpq_url(database_url)
    with psycopg.connect(conninfo) as admin:
        expected = {
            setting: int(admin.execute(f"SHOW {setting}").fetchone()[0])
            for setting in ("max_connections", "superuser_reserved_connections")
        }
    # Three connections that look like this app's pool, and the facts must count them.
    own = [psycopg.connect(conninfo, application_name=f"fastapi_dbpool:{name}") for _ in range(3)]
    try:
        facts = await inspect_server(database)
    finally:
        for conn in own:
            conn.close()
    assert facts.product == "PostgreSQL"
    assert facts.max_connections == expected["max_connections"]
    assert facts.superuser_reserved_connections == expected["superuser_reserved_connections"]
    assert facts.connections_of_app == 3
    assert facts.connections_in_use is not None and facts.connections_in_use >= 4
    assert facts.connections_in_use_by_others == facts.connections_in_use - 4
    assert facts.pooler is None and not facts.server_pid_differs
    assert facts.idle_session_timeout_s is not None
    assert facts.db_cores and facts.db_cores_source


@pytest.mark.postgres_only
async def test_inspect_unreachable_server_names_it_without_the_password(backend: str) -> None:
    url = f"postgresql://postgres:{CANARY}@127.0.0.1:{free_port()}/db"
    database = Database(DatabaseSettings(url=url, connect_timeout=2))
    with pytest.raises(ConnectFailed) as caught:
        await inspect_server(database)
    assert "cannot connect to postgresql+asyncpg://postgres:***@127.0.0.1" in str(caught.value)
    assert CANARY not in str(caught.value)


@pytest.mark.postgres_only
async def test_startup_warns_once_when_the_budget_does_not_fit(
    database_url: str,
    backend: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG, logger="fastapi_dbpool")
    monkeypatch.setenv("WEB_CONCURRENCY", "120")  # 120 x (5 + 0 + 1) = 720 connections
    async with Database(DatabaseSettings(url=database_url, pool_size=5)) as database:
        await finished_check(database)
    records = budget_records(caplog)
    assert len(records) == 1
    (record,) = records
    assert record.levelno == logging.WARNING
    assert record.event == "budget_exceeded"  # type: ignore[attr-defined]
    assert record.workers == 120 and record.per_worker == 6 and record.needed == 720  # type: ignore[attr-defined]
    assert record.fits is False  # type: ignore[attr-defined]
    assert record.available < 720  # type: ignore[attr-defined]
    message = record.getMessage()
    assert "120 worker(s) x (5 pool + 0 overflow + 1 probe) = 720 connections" in message
    assert f"max_connections {record.max_connections}" in message  # type: ignore[attr-defined]
    assert "DB_POOL_SIZE" in message


@pytest.mark.postgres_only
async def test_startup_logs_no_warning_when_the_budget_fits(
    database_url: str,
    backend: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG, logger="fastapi_dbpool")
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    async with Database(DatabaseSettings(url=database_url, pool_size=2)) as database:
        await finished_check(database)
    (record,) = budget_records(caplog)
    assert record.levelno == logging.DEBUG
    assert record.getMessage().startswith("connection budget fits: 1 worker(s)")
    assert record.needed == 3  # type: ignore[attr-defined]


async def test_budget_check_runs_on_postgresql_only(database_url: str, backend: str) -> None:
    async with Database(DatabaseSettings(url=database_url)) as database:
        if backend == "sqlite":
            assert database._budget_check is None
        else:
            await finished_check(database)


def _app(database: Database, *, async_route: bool) -> FastAPI:
    app = FastAPI()
    database.install(app)

    @app.get("/sync")
    def sync_one(session: SyncSessionDep) -> int:
        return int(session.scalar(text("SELECT 1")) or 0)

    if async_route:

        @app.get("/async")
        async def async_one(session: SessionDep) -> int:
            return int(await session.scalar(text("SELECT 1")) or 0)

    return app


async def test_a_sync_only_app_counts_its_sync_pool_alone(database_url: str, backend: str) -> None:
    """Its async pool never connects: the budget counts one pool, not two."""
    database = Database(DatabaseSettings(url=database_url, pool_size=2, max_overflow=0))
    async for client in _lifespan_client(_app(database, async_route=False)):
        assert (await client.get("/sync")).json() == 1
        assert database.pools_in_use == 1
        assert database.pool_use.sync_pool and not database.pool_use.async_pool
        if backend == "postgresql":
            budget = await check_budget(database, workers=1)
            assert budget is not None
            assert (budget.pools, budget.per_worker) == (1, 2 + 1)


async def test_an_app_with_both_kinds_counts_both_pools_from_the_start(
    database_url: str, backend: str
) -> None:
    database = Database(DatabaseSettings(url=database_url, pool_size=2, max_overflow=0))
    async for client in _lifespan_client(_app(database, async_route=True)):
        # Before any request opened the sync pool: the routes say it will be.
        assert database.pools_in_use == 2
        if backend == "postgresql":
            budget = await check_budget(database, workers=1)
            assert budget is not None and budget.pools == 2
        assert (await client.get("/async")).json() == 1


class Blackhole:
    """A TCP server that accepts connections and never answers: a hung database."""

    def __init__(self) -> None:
        self.accepted = 0
        self.accepted_one = asyncio.Event()
        self.closed_by_client = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.accepted_one.set()
        await reader.read()  # until the client closes
        self.closed_by_client.set()
        writer.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])


@pytest.fixture
async def blackhole() -> AsyncIterator[Blackhole]:
    hole = Blackhole()
    hole.server = await asyncio.start_server(hole.handle, "127.0.0.1", 0)
    async with hole.server:
        yield hole


@pytest.mark.postgres_only
@pytest.mark.timing
async def test_hung_database_neither_delays_nor_breaks_startup(
    backend: str, blackhole: Blackhole, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="fastapi_dbpool")
    url = f"postgresql://postgres:{CANARY}@127.0.0.1:{blackhole.port}/db"
    database = Database(DatabaseSettings(url=url, connect_timeout=1))
    started = time.perf_counter()
    await database.start()
    assert time.perf_counter() - started < 0.5  # the check runs in the background
    try:
        await finished_check(database)
        # Bounded by DB_CONNECT_TIMEOUT (1 s), with a generous margin for a busy machine.
        assert time.perf_counter() - started < 4
    finally:
        await database.stop()
    assert blackhole.accepted == 1
    (record,) = budget_records(caplog)
    assert record.levelno == logging.DEBUG
    assert "not checked" in record.getMessage() and "DB_CONNECT_TIMEOUT" in record.getMessage()
    assert CANARY not in caplog.text


@pytest.mark.postgres_only
@pytest.mark.timing
async def test_stop_cancels_a_running_check_and_closes_its_socket(
    backend: str, blackhole: Blackhole
) -> None:
    url = f"postgresql://postgres@127.0.0.1:{blackhole.port}/db"
    database = Database(DatabaseSettings(url=url, connect_timeout=60))
    await database.start()
    task = database._budget_check
    assert task is not None
    await asyncio.wait_for(blackhole.accepted_one.wait(), timeout=5)
    started = time.perf_counter()
    await database.stop()
    assert time.perf_counter() - started < 2
    assert task.cancelled()
    assert database._budget_check is None
    assert not [t for t in asyncio.all_tasks() if "budget check" in t.get_name()]
    await asyncio.wait_for(blackhole.closed_by_client.wait(), timeout=5)


@pytest.mark.postgres_only
async def test_refused_connection_is_logged_not_raised(
    backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="fastapi_dbpool")
    url = f"postgresql://postgres:{CANARY}@127.0.0.1:{free_port()}/db"
    async with Database(DatabaseSettings(url=url, connect_timeout=2)) as database:
        await finished_check(database)
        assert database.started
    (record,) = budget_records(caplog)
    assert record.levelno == logging.DEBUG
    assert "cannot connect" in record.getMessage()
    assert CANARY not in caplog.text


@pytest.mark.postgres_only
async def test_inspect_server_as_an_ordinary_role(database_url: str, backend: str) -> None:
    # No superuser rights: the server's /proc/cpuinfo is out of reach, everything else works.
    role = f"dbpool_plain_{uuid.uuid4().hex[:8]}"
    admin_execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        url = make_url(database_url).set(username=role).render_as_string(hide_password=False)
        facts = await inspect_server(Database(DatabaseSettings(url=url)))
    finally:
        admin_execute(f'DROP ROLE "{role}"')
    assert facts.max_connections is not None and facts.connections_in_use
    assert facts.db_cores_source == "the database runs on this machine"
