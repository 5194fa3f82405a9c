"""The :class:`Database`: one engine per app, created in the lifespan, and its sessions."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Any, Concatenate, ParamSpec, TypeVar

from fastapi import Depends
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool
from starlette.requests import HTTPConnection

from ._app import STATE_KEY, database_of
from .errors import DatabaseNotStarted, DBPoolError, InheritedAcrossFork
from .observe.leaks import watch_for_leaks
from .ops.startup_check import cancel_budget_check, schedule_budget_check
from .pool.cleanup import wait_for_pending_cleanups
from .pool.monitor import MONITOR_INFO_KEY, PoolMonitor, PoolSnapshot
from .pool.ping import install_idle_ping
from .pool.queue_pool import MonitoredPool
from .postgres.no_answer import install_no_answer
from .postgres.options import connect_args as postgres_connect_args
from .postgres.options import install_statement_timeout
from .postgres.replica import ReplicaRouter
from .request.classes import SessionClasses, session_classes
from .request.direct import DirectConnection, StatementCache, close_direct
from .request.joined import JoinedConnection, OpenUnits
from .request.retry import retry_transaction
from .request.routes import PoolUse, check_routes, pools_used
from .request.session import session_unit
from .settings import DatabaseSettings
from .sqlite.gate import READ_ONLY_OPTION, WriteGate, configure_sqlite
from .sqlite.interrupt import install_statement_guard

if TYPE_CHECKING:
    from starlette.types import ASGIApp

    from .request.retry import Transaction
    from .request.sync import SyncDatabase

__all__ = ["Database", "DatabaseDep"]

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
        settings: Pool and session settings; read from the environment (``DATABASE_URL``,
            ``DB_POOL_SIZE``, ...) when omitted.
        url: The database URL, instead of ``DATABASE_URL``; the other settings are still
            read from the environment.
        name: The pool's label in stats and metrics.
        session_class: The ``AsyncSession`` subclass that :data:`SessionDep`,
            ``ReadSessionDep`` and :meth:`session` yield, e.g. SQLModel's
            ``sqlmodel.ext.asyncio.session.AsyncSession``.
        sync_session_class: The ``Session`` subclass of ``SyncSessionDep`` and
            ``SyncReadSessionDep``, e.g. ``sqlmodel.Session``. With neither class given,
            SQLModel's are used when the app's models are SQLModel models (see
            :mod:`fastapi_dbpool.request.classes`), SQLAlchemy's otherwise.

    Raises:
        SettingsError: a setting is invalid, or no URL is given and ``DATABASE_URL`` is
            not set; the message names the variable.
    """

    def __init__(
        self,
        settings: DatabaseSettings | None = None,
        *,
        url: str | None = None,
        name: str = "primary",
        session_class: type[AsyncSession] | None = None,
        sync_session_class: type[Session] | None = None,
    ) -> None:
        if settings is not None and url is not None:
            raise TypeError("pass either settings or url, not both")
        if settings is None:
            settings = DatabaseSettings.from_env(**({"url": url} if url is not None else {}))
        self.settings = settings
        self.name = name
        session_classes(session_class, sync_session_class)  # TypeError now, not at start
        self._class_choice = (session_class, sync_session_class)
        self._classes: SessionClasses | None = None
        max_waiting = self.settings.max_waiting
        # One monitor per pool this database may use, created up front so that metrics,
        # the dashboard and the checks list every pool from the start.
        self.monitor = PoolMonitor(name, max_waiting=max_waiting)
        self.sync_monitor = PoolMonitor(f"{name}-sync", max_waiting=max_waiting)
        self.probe_monitor = PoolMonitor(f"{name}-probe")
        self._engine: AsyncEngine | None = None
        self._probe_engine: AsyncEngine | None = None
        self._sessions: async_sessionmaker[AsyncSession] | None = None
        self._read_sessions: async_sessionmaker[AsyncSession] | None = None
        self.write_gate: WriteGate | None = None
        self._budget_check: asyncio.Task[None] | None = None
        self.leak_detector = watch_for_leaks(self.monitor, self.settings.leak_threshold_s)
        self._sync: SyncDatabase | None = None
        # True when the sync engine was created outside the app (database.sync before
        # the lifespan, or `with database:`): it then outlives the app's stop.
        self._sync_outlives_app = False
        # Per `with database:` block (they may nest): did the sync engine exist before it?
        self._sync_kept: list[bool] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._statements: StatementCache | None = None
        # The test's connection while joined (see join), and the units open on it.
        self._joined: AsyncConnection | None = None
        self.joined_units = OpenUnits()
        # A read replica is a Database of its own (its own pool, monitor and metrics
        # label); read-only sessions go there while it answers.
        self.replica: Database | None = (
            Database(
                self.settings.for_replica(),
                name="replica",
                session_class=session_class,
                sync_session_class=sync_session_class,
            )
            if self.settings.replica_url is not None
            else None
        )
        self._replicas = ReplicaRouter(self.replica, self.settings.replica_retry_s)
        # The pools the app's routes take connections from (set by install at start).
        self.routes_use: PoolUse | None = None
        # Started in another process that forked this one (see _mark_inherited).
        self._inherited = False
        self._started_pid: int | None = None

    @property
    def session_classes(self) -> SessionClasses:
        """The (async, sync) session classes the sessions are made of.

        Decided when the database starts (the app's models are imported by then); before
        that, decided anew at each call.
        """
        if self._classes is not None:
            return self._classes
        return session_classes(*self._class_choice)

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
                "(Database.install(app)) or `async with database:`; sync code without an "
                "event loop uses `with database:` and database.sync"
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
        self.monitor.attach(engine.pool)
        if settings.pool_pre_ping and settings.backend == "postgresql":
            install_idle_ping(
                engine.sync_engine.pool, settings.pool_pre_ping_idle_s, engine.dialect.do_ping
            )
        if settings.backend == "sqlite":
            gate = self.write_gate = WriteGate(settings.pool_timeout, self.monitor)
            self.monitor.count_writers_waiting = lambda: gate.waiting
            configure_sqlite(engine.sync_engine, gate, settings.sqlite_busy_timeout_ms)
            install_statement_guard(engine.sync_engine, settings.statement_timeout_ms)
        else:
            install_statement_timeout(engine.sync_engine, settings)
            install_no_answer(engine.sync_engine, settings)
        self._engine = engine
        self._started_pid = os.getpid()
        _STARTED.add(self)
        self._loop = asyncio.get_running_loop()
        self._classes = session_classes(*self._class_choice)
        async_class = self._classes[0]
        # info: what a retried handler's session counts its retries on (request/retry.py).
        info = {MONITOR_INFO_KEY: self.monitor}
        self._sessions = async_sessionmaker(
            engine, class_=async_class, expire_on_commit=False, info=info
        )
        read_engine = engine.execution_options(**self._read_only_options())
        self._read_sessions = async_sessionmaker(
            read_engine, class_=async_class, expire_on_commit=False, info=info
        )
        logger.debug(
            "database started",
            extra={
                "pool": self.name,
                "event": "start",
                "url": settings.redacted_url,
                "pool_size": settings.pool_size,
                "max_overflow": settings.max_overflow,
            },
        )
        if self._sync is not None:
            # Created before the app started (a script or a test fixture used
            # database.sync): the same engine now serves requests too.
            self._sync.use_loop(self._loop, self.write_gate)
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
        self._engine = self._probe_engine = None
        if not self._sync_outlives_app:
            self._sync = None
        self._sessions = self._read_sessions = None
        self._statements = None
        self._joined = None
        await wait_for_pending_cleanups(timeout=self.settings.pool_timeout)
        if sync is not None:
            await sync.dispose()
            if self._sync_outlives_app:
                sync.use_threads()
        for each in (probe, engine):
            if each is not None:
                await each.dispose()
        if self.leak_detector is not None:
            self.leak_detector.stop()
        if engine is not None:
            logger.debug("database stopped", extra={"pool": self.name, "event": "stop"})

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

    def __enter__(self) -> Database:
        """Start the sync engine alone, for sync code with no event loop (scripts, CLI).

        ``with database:`` gives :attr:`sync` (``database.sync.engine``,
        ``database.sync.session()``) on the same settings as the app, opens no async
        pool, and closes the sync pool when the block ends. Inside a running app use
        the lifespan (:meth:`install`) instead.

        A sync engine that existed before the block (``engine = database.sync.engine``
        at import time) is the one the block uses, and it survives the block: its pooled
        connections are closed at the end, the engine object stays, so whoever holds it
        keeps using the database's one sync engine.

        Raises:
            DBPoolError: the database is already started (inside the app's lifespan or
                ``async with database:``).
        """
        if self._engine is not None:
            raise DBPoolError(
                f"database {self.name!r} is already started; `with database:` is for sync "
                "code outside the app (scripts, CLI commands, test fixtures)"
            )
        self._sync_kept.append(self._sync is not None)
        self.sync  # noqa: B018 - created now, without an event loop
        return self

    def __exit__(self, *exc_info: object) -> None:
        kept = self._sync_kept.pop() if self._sync_kept else False
        sync = self._sync
        if sync is None:
            return
        if kept:
            # Someone may hold sync.engine: return its connections, keep the engine
            # (and its leak watch), as stop() does for an engine that outlives the app.
            sync.engine.dispose()
            return
        self._sync = None
        self._sync_outlives_app = False
        sync.close()

    def install(self, app: Any) -> None:
        """Attach to a FastAPI/Starlette *app*: lifespan, app state and error responses.

        The app's own lifespan keeps working: the engine starts before it and stops
        after it, so the app's start-up code can already use the database. When the
        lifespan starts, every route's dependencies are checked first (see
        :mod:`fastapi_dbpool.request.routes`): a sync session taken by an ``async def``
        endpoint or dependency, or a :mod:`fastapi_dbpool.sqlmodel` alias on SQLAlchemy
        sessions, raises DBPoolError naming the route, and the app does not start. At shutdown,
        requests still running ``SHUTDOWN_GRACE_S`` after SIGTERM are answered 503
        (see ``request/shutdown.py``).
        """
        from .request.retry import check_retried_routes
        from .request.shutdown import install_shutdown_guard
        from .responses import install_error_handlers

        setattr(app.state, STATE_KEY, self)
        original = app.router.lifespan_context

        @asynccontextmanager
        async def lifespan(app_: ASGIApp) -> AsyncIterator[Any]:
            # Before anything starts: routes are complete by now, and the models imported.
            check_routes(app.routes, self.session_classes)
            check_retried_routes(app)
            self.routes_use = self.pools_used_by(app)
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
        if self._joined is not None:
            kind = "read session" if read_only else "session"
            return self.joined_units.track(self._session(read_only), kind)
        replica = self._replicas.choose() if read_only else None
        if replica is not None:
            return self._replicas.watch(replica.session(read_only=True))
        return self._session(read_only)

    def join(self, connection: AsyncConnection | None) -> None:
        """Run every unit of work on *connection*, in its transaction; None: stop.

        SQLAlchemy's "join a session into an external transaction" recipe, for tests
        (:mod:`fastapi_dbpool.pytest_plugin` does it): sessions run in a savepoint, so
        a session's commit releases its savepoint and the test's rollback undoes
        everything. Direct connections (``ConnectionDep``, ``ReadConnectionDep``,
        :meth:`connection`) run on *connection* too, writes in savepoints (see
        :mod:`fastapi_dbpool.request.joined`). Reads stay on the primary, replica or
        not, so that they see the test's writes. The sync side has
        ``database.sync.join``. Units begun while joined are counted in
        :attr:`joined_units` (a new count at each join).
        """
        if connection is None:
            engine = self.engine
            bind: Any = engine
            read_bind: Any = engine.execution_options(**self._read_only_options())
            mode: Any = "conservative_savepoint"
        else:
            bind = read_bind = connection
            mode = "create_savepoint"
            self.joined_units = OpenUnits()
        cls = self.session_classes[0]
        options: dict[str, Any] = {"class_": cls, "expire_on_commit": False}
        self._sessions = async_sessionmaker(bind, join_transaction_mode=mode, **options)
        self._read_sessions = async_sessionmaker(read_bind, join_transaction_mode=mode, **options)
        self._joined = connection

    def monitors(self) -> list[PoolMonitor]:
        """Every pool this database uses: async, sync, health probe, and the replica's.

        What metrics, the dashboard, readiness and the start-up budget check report.
        """
        own = [self.monitor, self.sync_monitor, self.probe_monitor]
        return own if self.replica is None else own + self.replica.monitors()

    def _session(self, read_only: bool) -> AbstractAsyncContextManager[AsyncSession]:
        factory = self._read_sessions if read_only else self._sessions
        if factory is None or self._inherited:
            self.engine  # noqa: B018 - raises DatabaseNotStarted with the reason
            raise AssertionError("unreachable")
        return session_unit(factory, read_only=read_only, gate=self.write_gate)

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

    def transaction(
        self,
        retries: int | None = None,
        *,
        max_seconds: float = 5.0,
        backoff_s: float = 0.02,
        read_only: bool = False,
    ) -> Transaction:
        """A unit of work in its own session, re-run on a serialization failure or deadlock.

        For background work and scripts whose only side effects are in the database
        (request handlers opt in with :meth:`Database.retrying`; see
        :mod:`fastapi_dbpool.request.retry` for the rule)::

            @database.transaction(retries=5)
            async def transfer(session: AsyncSession, source: int, target: int) -> None: ...

            async for attempt in database.transaction(retries=5):
                async with attempt as session:
                    ...

            async with database.transaction() as session:  # once, like engine.begin()
                ...

        Args:
            retries: Attempts after the first; 0 runs the unit once. Unset: 3 for the
                decorator and the loop, and ``async with`` runs its block once (given
                above 0, ``async with`` raises TypeError: it cannot re-run a block).
            max_seconds: Bound on the whole unit, attempts and backoff included.
            backoff_s: Base of the exponential backoff (full jitter, capped at 0.5 s).
            read_only: A read-only session (see :meth:`session`).

        The last failure is raised as it was (a transient error: answered 503). Each
        retry is counted in ``dbpool_transaction_retries_total``.
        """
        from .request.retry import RetryPolicy, Transaction

        policy = RetryPolicy(
            retries=3 if retries is None else retries, max_seconds=max_seconds, backoff_s=backoff_s
        )
        return Transaction(self, policy, read_only=read_only, once_as_block=retries is None)

    #: Mark an ``async def`` handler as safe to re-run on a serialization failure or
    #: deadlock: ``@Database.retrying(retries=5)`` under the route decorator. The
    #: handler's ``SessionDep`` / ``ConnectionDep`` are committed by the marker, so a
    #: failure at COMMIT is retried too. Only for handlers whose every side effect is in
    #: the database (see :func:`fastapi_dbpool.request.retry.retry_transaction`).
    retrying = staticmethod(retry_transaction)

    @property
    def sync(self) -> SyncDatabase:
        """The sync engine on the same database, created at first use (see :mod:`.sync`).

        In the app's lifespan (or ``async with database:``) it serves ``SyncSessionDep``.
        Outside it (a script, a test fixture, Alembic; ``with database:`` closes it at
        the block's end) it is created without an event loop, and when the app starts
        the same engine serves requests too: one sync engine per process.
        """
        if self._sync is None and self._engine is None:
            from .request.sync import SyncDatabase

            self._sync = SyncDatabase(self, None, self.sync_monitor)
            self._sync_outlives_app = True
        if self._sync is None:
            from .request.sync import SyncDatabase

            loop = self._loop
            assert loop is not None
            self._sync = SyncDatabase(self, loop, self.sync_monitor)
            # A second pool now counts against the server's connections: check again
            # (a check still running reads pools_in_use when it computes the budget),
            # on the loop: the first use may come from a worker thread.
            if _running_loop() is loop:
                self._recheck_budget()
            else:
                loop.call_soon_threadsafe(self._recheck_budget)
        return self._sync

    def _recheck_budget(self) -> None:
        if self._engine is not None and (self._budget_check is None or self._budget_check.done()):
            self._budget_check = schedule_budget_check(self)

    @staticmethod
    def pools_used_by(app: Any) -> PoolUse:
        """Which pools *app*'s routes take connections from (see request/routes.py)."""
        return pools_used(app.routes, also_async=(_database,))

    @property
    def pool_use(self) -> PoolUse:
        """The pools that can connect: what the budget, readiness and doctor count.

        The async pool unless the app's routes take only sync sessions and it never
        connected (a sync-only app); the sync pool once opened, or when the routes take
        sync sessions. Without an app (scripts, tests), the async pool.
        """
        routes = self.routes_use
        sync = self._sync is not None or (routes is not None and routes.sync_pool)
        use_async = (
            routes is None or routes.async_pool or not sync or self.monitor.connects_total > 0
        )
        return PoolUse(async_pool=use_async, sync_pool=sync)

    @property
    def pools_in_use(self) -> int:
        """Pools of ``DB_POOL_SIZE`` connections that can connect: 1 or 2 (:attr:`pool_use`)."""
        use = self.pool_use
        return int(use.async_pool) + int(use.sync_pool)

    def connection(
        self, *, read_only: bool = False
    ) -> AbstractAsyncContextManager[DirectConnection]:
        """Open a :class:`~fastapi_dbpool.DirectConnection`: Core statements, no session.

        The fast path for hot endpoints: statements compiled once, run on the pooled
        driver connection, rows as dicts. A writing connection commits when the block
        ends and rolls back if it raises; a *read_only* one accepts only selects, and
        runs on the replica when there is one (see :meth:`session`).
        """
        if self._joined is not None:
            kind = "read connection" if read_only else "connection"
            return self.joined_units.track(self._direct(read_only, self._joined), kind)
        replica = self._replicas.choose() if read_only else None
        if replica is not None:
            return self._replicas.watch(replica.connection(read_only=True))
        return self._direct(read_only)

    @asynccontextmanager
    async def _direct(
        self, read_only: bool, joined: AsyncConnection | None = None
    ) -> AsyncIterator[DirectConnection]:
        statements = self._statements
        if statements is None:
            statements = self._statements = StatementCache(self.engine.dialect)
        connection = (
            DirectConnection(self, statements, read_only=read_only)
            if joined is None
            else JoinedConnection(self, statements, read_only=read_only, joined=joined)
        )
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
            self.probe_monitor.attach(self._probe_engine.pool)
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
            # Replaced by install_idle_ping (see pool/ping.py); a SQLite file cannot drop a
            # connection, so there is nothing to ping there.
            "pool_pre_ping": False,
            "echo": settings.echo,
            "connect_args": self._connect_args(),
        }

    def _read_only_options(self) -> dict[str, Any]:
        if self.settings.backend == "sqlite":
            return {READ_ONLY_OPTION: True}
        return {"postgresql_readonly": True}


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _database(conn: HTTPConnection) -> Database:
    return database_of(conn.app)


#: The app's :class:`Database`, for handlers that open sessions of their own or read its
#: state; it takes no connection.
DatabaseDep = Annotated[Database, Depends(_database)]
