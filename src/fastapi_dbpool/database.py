"""The :class:`Database`: one engine per app, created in the lifespan, and its sessions."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool

from ._cleanup import run_to_completion, wait_for_pending_cleanups
from ._direct import DirectConnection, StatementCache, close_direct
from ._no_answer import install_no_answer
from ._ping import install_idle_ping
from ._pool import MonitoredPool, PoolMonitor, PoolSnapshot
from ._postgres import connect_args as postgres_connect_args
from ._postgres import install_statement_timeout
from ._sqlite import READ_ONLY_OPTION, WriteGate, configure_sqlite
from ._sqlite_interrupt import install_statement_guard
from ._startup_check import cancel_budget_check, schedule_budget_check
from .errors import ConnectFailed, DatabaseNotStarted, InheritedAcrossFork
from .leaks import watch_for_leaks
from .settings import DatabaseSettings

if TYPE_CHECKING:
    from starlette.types import ASGIApp

    from .sync import SyncDatabase

__all__ = ["Database"]

logger = logging.getLogger("fastapi_dbpool")

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

# Databases with a running engine in this process, so that a fork can mark them.
_STARTED: weakref.WeakSet[Database] = weakref.WeakSet()


def _mark_inherited() -> None:
    # In the child, just after fork(): the engines came from the parent.
    for database in list(_STARTED):
        database._inherited = True


os.register_at_fork(after_in_child=_mark_inherited)


class Database:
    """An engine and its session factories, started and stopped with the app.

    Create one per app, usually in the app factory, and :meth:`install` it: the engine
    is created when the app's lifespan starts and disposed when it ends, around the
    app's own lifespan. Nothing connects at import time.

    Args:
        settings: Pool and session settings; read from the environment when omitted.
        name: The pool's label in stats and metrics.
    """

    def __init__(self, settings: DatabaseSettings | None = None, *, name: str = "primary") -> None:
        self.settings = settings if settings is not None else DatabaseSettings.from_env()
        self.name = name
        self.monitor = PoolMonitor(name, max_waiting=self.settings.max_waiting)
        self._engine: AsyncEngine | None = None
        self._probe_engine: AsyncEngine | None = None
        self._sessions: async_sessionmaker[AsyncSession] | None = None
        self._read_sessions: async_sessionmaker[AsyncSession] | None = None
        self.write_gate: WriteGate | None = None
        self._budget_check: asyncio.Task[None] | None = None
        self.leak_detector = watch_for_leaks(self.monitor, self.settings.leak_threshold_s)
        self._sync: SyncDatabase | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._statements: StatementCache | None = None
        # A read replica is a Database of its own (its own pool, monitor and metrics
        # label); read-only sessions go there while it answers.
        self.replica: Database | None = (
            Database(self.settings.for_replica(), name="replica")
            if self.settings.replica_url is not None
            else None
        )
        self._replica_down_until = 0.0
        # Started in another process that forked this one (see _mark_inherited).
        self._inherited = False
        self._started_pid: int | None = None

    def __repr__(self) -> str:
        state = "started" if self._engine is not None else "stopped"
        return f"<Database {self.name} {self.settings.redacted_url} {state}>"

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def started(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._engine is not None

    @property
    def engine(self) -> AsyncEngine:
        """The running engine.

        Raises:
            DatabaseNotStarted: outside the app's lifespan.
            InheritedAcrossFork: the engine was started in the parent of this process.
        """
        if self._inherited:
            raise self._inherited_error()
        if self._engine is None:
            raise DatabaseNotStarted(
                f"database {self.name!r} is not started: use it inside the app's lifespan "
                "(Database.install(app)) or `async with database:`"
            )
        return self._engine

    async def start(self) -> None:
        """Create the engine and session factories, without connecting.

        A database that is down at start-up leaves the app serving, and not ready,
        until it is back.

        Raises:
            InheritedAcrossFork: it was started in the process this one forked from.
        """
        if self._inherited:
            raise self._inherited_error()
        if self._engine is not None:
            return
        settings = self.settings
        engine = create_async_engine(settings.sqlalchemy_url, **self._engine_options())
        self.monitor.attach(engine.pool)  # type: ignore[arg-type]
        if settings.pool_pre_ping and settings.backend == "postgresql":
            install_idle_ping(engine.sync_engine.pool, settings.pool_pre_ping_idle_s)
        if settings.backend == "sqlite":
            self.write_gate = WriteGate(timeout=settings.pool_timeout)
            configure_sqlite(engine.sync_engine, self.write_gate, settings.sqlite_busy_timeout_ms)
            install_statement_guard(engine.sync_engine, settings.statement_timeout_ms)
        else:
            install_statement_timeout(engine.sync_engine, settings)
            install_no_answer(engine.sync_engine, settings)
        self._engine = engine
        self._started_pid = os.getpid()
        _STARTED.add(self)
        self._loop = asyncio.get_running_loop()
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        read_engine = engine.execution_options(**self._read_only_options())
        self._read_sessions = async_sessionmaker(read_engine, expire_on_commit=False)
        logger.info(
            "database started",
            extra={
                "pool": self.name,
                "event": "start",
                "url": settings.redacted_url,
                "pool_size": settings.pool_size,
                "max_overflow": settings.max_overflow,
            },
        )
        # In the background: start-up neither waits for the database nor fails with it.
        self._budget_check = schedule_budget_check(self)
        if self.replica is not None:
            await self.replica.start()

    async def stop(self) -> None:
        """Dispose of the engine, closing every pooled connection.

        In a forked child the inherited engine is dropped without closing its
        connections, which belong to the parent.
        """
        if self._inherited:
            self._forget_inherited()
            return
        if self.replica is not None:
            await self.replica.stop()
        _STARTED.discard(self)
        check, self._budget_check = self._budget_check, None
        await cancel_budget_check(check)
        engine, probe, sync = self._engine, self._probe_engine, self._sync
        self._engine = self._probe_engine = self._sync = None
        self._sessions = self._read_sessions = None
        self._statements = None
        await wait_for_pending_cleanups(timeout=self.settings.pool_timeout)
        if sync is not None:
            await sync.dispose()
        for each in (probe, engine):
            if each is not None:
                await each.dispose()
        if self.leak_detector is not None:
            self.leak_detector.stop()
        if engine is not None:
            logger.info("database stopped", extra={"pool": self.name, "event": "stop"})

    def _inherited_error(self) -> InheritedAcrossFork:
        return InheritedAcrossFork(
            f"database {self.name!r} was started in process {self._started_pid} and is used "
            f"in process {os.getpid()}, a fork of it: pooled connections cannot be shared "
            "between processes. Start it in each worker after the fork: Database.install(app)"
            " does so in the app's lifespan; do not start it at import time (with gunicorn,"
            " not before the workers fork, e.g. under --preload)"
        )

    def _forget_inherited(self) -> None:
        # The parent's sockets: closing them here would close them for the parent too.
        # Dropping the references is what SQLAlchemy's dispose(close=False) amounts to.
        self._engine = self._probe_engine = self._sync = None
        self._sessions = self._read_sessions = None
        self._statements = None
        self._budget_check = None
        self._inherited = False
        if self.replica is not None:
            self.replica._forget_inherited()

    async def __aenter__(self) -> Database:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def install(self, app: Any) -> None:
        """Attach to a FastAPI/Starlette *app*: lifespan, app state and error responses.

        The app's own lifespan keeps working: the engine starts before it and stops
        after it, so the app's start-up code can already use the database. At shutdown,
        requests still running ``SHUTDOWN_GRACE_S`` after SIGTERM are answered 503
        (see ``_shutdown.py``).
        """
        from ._shutdown import install_shutdown_guard
        from .responses import install_error_handlers

        app.state.fastapi_dbpool = self
        original = app.router.lifespan_context

        @asynccontextmanager
        async def lifespan(app_: ASGIApp) -> AsyncIterator[Any]:
            async with self, original(app_) as state:
                yield state

        app.router.lifespan_context = lifespan
        install_error_handlers(app)
        install_shutdown_guard(app)

    # -- sessions -----------------------------------------------------------------------

    def session(self, *, read_only: bool = False) -> AbstractAsyncContextManager[AsyncSession]:
        """Open a session in its own transaction: commit on success, roll back on error.

        Use it for work outside a request (background tasks, scripts, workers); pass
        such work IDs, never ORM objects or a request's session. A *read_only* session
        does not take SQLite's write lock and runs READ ONLY on PostgreSQL.

        The connection is checked out at the first statement and returned when the
        block ends, also when the task is cancelled. With a replica configured
        (``DATABASE_REPLICA_URL``), *read_only* sessions run there, and on the primary
        for ``DB_REPLICA_RETRY_S`` after the replica failed to connect.
        """
        replica = self._usable_replica() if read_only else None
        if replica is not None:
            return self._on_replica(replica.session(read_only=True))
        return self._session(read_only)

    def pools(self) -> list[Database]:
        """This database and its replica, if any: what stats and metrics report."""
        return [self] if self.replica is None else [self, self.replica]

    def _usable_replica(self) -> Database | None:
        if self.replica is None or time.monotonic() < self._replica_down_until:
            return None
        return self.replica

    @asynccontextmanager
    async def _on_replica(self, opened: AbstractAsyncContextManager[T]) -> AsyncIterator[T]:
        try:
            async with opened as handle:
                yield handle
        except (ConnectFailed, DBAPIError) as error:
            if isinstance(error, DBAPIError) and not error.connection_invalidated:
                raise  # a query's own error, not the replica going away
            # This request fails (503): its reads may already have happened. The next
            # ones go to the primary until the retry delay has passed.
            self._replica_down_until = time.monotonic() + self.settings.replica_retry_s
            logger.warning(
                "replica unreachable; reads go to the primary for %g s",
                self.settings.replica_retry_s,
                extra={"pool": "replica", "event": "replica_down"},
            )
            raise

    @asynccontextmanager
    async def _session(self, read_only: bool) -> AsyncIterator[AsyncSession]:
        factory = self._read_sessions if read_only else self._sessions
        if factory is None or self._inherited:
            self.engine  # noqa: B018 - raises DatabaseNotStarted with the reason
            raise AssertionError("unreachable")
        session = factory()
        try:
            yield session
        except BaseException:
            # The caller's error is the one that matters; a failing rollback on a broken
            # connection is logged, and the connection is invalidated by SQLAlchemy.
            await run_to_completion(_discard_quietly(session))
            raise
        await run_to_completion(_discard(session) if read_only else _commit(session))

    def with_session(
        self, func: Callable[Concatenate[AsyncSession, P], Awaitable[R]]
    ) -> Callable[P, Awaitable[R]]:
        """Decorate *func* so that each call gets a fresh session as first argument.

        The session commits when *func* returns and rolls back when it raises::

            @database.with_session
            async def mark_done(session: AsyncSession, item_id: int) -> None: ...

            background_tasks.add_task(mark_done, item.id)
        """

        @functools.wraps(func)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            async with self.session() as session:
                return await func(session, *args, **kwargs)

        return wrapper

    @property
    def sync(self) -> SyncDatabase:
        """The sync engine on the same database, created at first use (see :mod:`.sync`).

        Raises:
            DatabaseNotStarted: outside the app's lifespan.
        """
        if self._sync is None:
            from .sync import SyncDatabase

            self.engine  # noqa: B018 - raises DatabaseNotStarted with the reason
            assert self._loop is not None
            self._sync = SyncDatabase(self, self._loop)
        return self._sync

    def connection(
        self, *, read_only: bool = False
    ) -> AbstractAsyncContextManager[DirectConnection]:
        """Open a :class:`~fastapi_dbpool.DirectConnection`: Core statements, no session.

        The fast path for hot endpoints: statements compiled once, run on the pooled
        driver connection, rows as dicts. A writing connection commits when the block
        ends and rolls back if it raises; a *read_only* one accepts only selects, and
        runs on the replica when there is one (see :meth:`session`).
        """
        replica = self._usable_replica() if read_only else None
        if replica is not None:
            return self._on_replica(replica.connection(read_only=True))
        return self._direct(read_only)

    def _new_direct(self, read_only: bool) -> DirectConnection:
        """A DirectConnection that has not checked out yet; the caller closes it."""
        statements = self._statements
        if statements is None:
            statements = self._statements = StatementCache(self.engine.dialect)
        return DirectConnection(self, statements, read_only=read_only)

    @asynccontextmanager
    async def _direct(self, read_only: bool) -> AsyncIterator[DirectConnection]:
        connection = self._new_direct(read_only)
        try:
            yield connection
        except BaseException:
            await close_direct(connection, commit=False)
            raise
        await close_direct(connection, commit=not read_only)

    # -- introspection ------------------------------------------------------------------

    def pool_snapshot(self) -> PoolSnapshot:
        """The pool's state now (see :class:`~fastapi_dbpool.PoolSnapshot`)."""
        return self.monitor.snapshot()

    @property
    def probe_engine(self) -> AsyncEngine:
        """A one-connection engine for health probes, apart from the request pool.

        A probe must not queue behind requests for a pooled connection: it would then
        report "down" for a database that is only busy.
        """
        if self._probe_engine is None:
            engine = self.engine
            self._probe_engine = create_async_engine(
                engine.url, poolclass=NullPool, connect_args=self._connect_args()
            )
            if self.settings.backend == "sqlite":
                # Pragmas only; the probe runs SELECT 1 in autocommit and needs no gate.
                configure_sqlite(
                    self._probe_engine.sync_engine,
                    WriteGate(0.1),
                    self.settings.sqlite_busy_timeout_ms,
                )
        return self._probe_engine

    # -- engine options -----------------------------------------------------------------

    def _connect_args(self) -> dict[str, Any]:
        settings = self.settings
        if settings.backend == "sqlite":
            # sqlite3's own wait for another process's lock, in seconds.
            return {"timeout": settings.sqlite_busy_timeout_ms / 1000}
        return postgres_connect_args(settings, application_name=f"fastapi_dbpool:{self.name}")

    def _engine_options(self) -> dict[str, Any]:
        settings = self.settings
        return {
            "poolclass": MonitoredPool,
            "pool_size": settings.pool_size,
            "max_overflow": settings.max_overflow,
            "pool_timeout": settings.pool_timeout,
            "pool_recycle": settings.pool_recycle,
            # Replaced by install_idle_ping (see _ping.py); a SQLite file cannot drop a
            # connection, so there is nothing to ping there.
            "pool_pre_ping": False,
            "echo": settings.echo,
            "connect_args": self._connect_args(),
        }

    def _read_only_options(self) -> dict[str, Any]:
        if self.settings.backend == "sqlite":
            return {READ_ONLY_OPTION: True}
        return {"postgresql_readonly": True}


async def _commit(session: AsyncSession) -> None:
    """Commit and close; on failure roll back, close, and raise the commit's error."""
    try:
        await session.commit()
    except BaseException:
        await _discard(session)
        raise
    await session.close()


async def _discard(session: AsyncSession) -> None:
    """Roll back whatever is open and return the connection to the pool."""
    try:
        await session.rollback()
    finally:
        await session.close()


async def _discard_quietly(session: AsyncSession) -> None:
    try:
        await _discard(session)
    except Exception:
        logger.warning(
            "rollback failed after an error", exc_info=True, extra={"event": "rollback_failed"}
        )
