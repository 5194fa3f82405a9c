"""The sync engine behind :mod:`fastapi_dbpool.request.sync`: psycopg 3 or sqlite3, monitored.

Same pool settings as the async engine, its own connections, and on SQLite the same
pragmas and the same process-wide write gate (see :mod:`fastapi_dbpool.sqlite.gate`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import threading
from contextlib import suppress
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.engine import Engine
from sqlalchemy.pool import ConnectionPoolEntry

from ..pool.monitor import PoolMonitor
from ..pool.ping import install_idle_ping
from ..pool.queue_pool import MonitoredSyncPool
from ..postgres.no_answer import libpq_no_answer_options
from ..postgres.options import install_statement_timeout
from ..settings import DatabaseSettings
from ..sqlite.gate import WriteGate, configure_sqlite
from ..sqlite.interrupt import install_statement_guard

__all__ = ["SwitchingWriteGate", "ThreadWriteGate", "create_sync_engine"]


def create_sync_engine(
    settings: DatabaseSettings, name: str, monitor: PoolMonitor | None = None
) -> tuple[Engine, SwitchingWriteGate | None]:
    """A sync engine for *settings*' database, and on SQLite its write gate.

    The gate serialises writers with a lock of its own until
    :meth:`SwitchingWriteGate.use_loop` shares the async engine's gate. Its writers
    wait under *monitor*'s counters (the sync pool's).
    """
    engine = create_engine(settings.sync_url, **_engine_options(settings, name))
    gate: SwitchingWriteGate | None = None
    if settings.backend == "sqlite":
        gate = SwitchingWriteGate(settings.pool_timeout, monitor)
        configure_sqlite(engine, gate, settings.sqlite_busy_timeout_ms)
        install_statement_guard(engine, settings.statement_timeout_ms)
    else:
        install_statement_timeout(engine, settings)
        if settings.pool_pre_ping:
            # The same idle-aware ping as the async pool (see pool/ping.py), not
            # SQLAlchemy's ping on every checkout.
            install_idle_ping(engine.pool, settings.pool_pre_ping_idle_s, engine.dialect.do_ping)
    return engine, gate


class _LoopWriteGate(WriteGate):
    """The process's SQLite :class:`WriteGate`, taken from worker threads.

    Sync and async sessions must share one gate, or two writers of the same process
    would meet in SQLite's busy handler. The gate lives on the event loop; a worker
    thread takes it by running the gate's own wait there, under the sync pool's
    counters, and blocking until it returns, which ``DB_POOL_TIMEOUT`` bounds.
    """

    def __init__(
        self, gate: WriteGate, loop: asyncio.AbstractEventLoop, monitor: PoolMonitor
    ) -> None:
        super().__init__(gate.timeout, monitor)
        self._gate = gate
        self._loop = loop

    @property
    def held(self) -> bool:
        """True while a transaction, sync or async, holds the gate."""
        return self._gate.held

    def held_here(self) -> bool:
        """True when the unit of work this thread runs for holds the loop's gate.

        The unit took it on the loop before its checkout (SyncDatabase.begin); the
        worker thread sees the unit through the context it was started with.
        """
        return self._gate.held_here()

    def acquire(self, record: ConnectionPoolEntry, monitor: PoolMonitor | None = None) -> None:
        """Block this worker thread until the loop's gate is taken for *record*."""
        if _running_loop() is self._loop:
            raise RuntimeError(
                "a sync session was used on the event loop's thread, where it would block "
                "every request; use it in `def` endpoints and dependencies"
            )
        monitor = self.monitor if monitor is None else monitor
        taking = asyncio.run_coroutine_threadsafe(
            self._gate.acquire_async(record, monitor, carry=False), self._loop
        )
        # The loop side gives up after DB_POOL_TIMEOUT; this bound only matters if the
        # loop stops answering. Giving up here is safe: should the gate be taken for
        # *record* later, the connection's checkin gives it back.
        try:
            taking.result(timeout=self.timeout + 1)
        except concurrent.futures.TimeoutError:
            taking.cancel()
            raise self._gate.queue_for(monitor).timed_out() from None

    def release(self, holder: object) -> None:
        """Give the gate back on the loop if *holder* (a connection's record) holds it."""
        with suppress(RuntimeError):  # the loop is closed: the gate went with it
            self._loop.call_soon_threadsafe(self._gate.release, holder)


class ThreadWriteGate(WriteGate):
    """SQLite's one-writer gate for threads only: a sync engine with no event loop.

    Threads cannot queue on the loop's permits: they wait on a thread lock, and the
    pools' :class:`~fastapi_dbpool.pool.waiting.Waiting` does the rest (the
    ``DB_MAX_WAITING`` bound, the counters, the error), as for the sync pool's own
    thread path.
    """

    def __init__(self, timeout: float, monitor: PoolMonitor | None = None) -> None:
        super().__init__(timeout, monitor)
        self._thread_lock = threading.Lock()
        self._thread_holder: ConnectionPoolEntry | None = None

    @property
    def held(self) -> bool:
        """True while a transaction holds the gate."""
        return self._thread_lock.locked()

    def acquire(self, record: ConnectionPoolEntry, monitor: PoolMonitor | None = None) -> None:
        """Block until the gate is free, for up to ``DB_POOL_TIMEOUT`` seconds.

        Raises:
            TooManyWaiting: ``DB_MAX_WAITING`` callers already wait for the pool.
            PoolTimeout: The gate stayed taken for ``DB_POOL_TIMEOUT`` seconds.
        """
        if self._thread_holder is record:
            return
        if not self._thread_lock.acquire(blocking=False):
            queue = self.queue_for(monitor)
            with queue.queued():
                if not self._thread_lock.acquire(timeout=self.timeout):
                    raise queue.timed_out()
        self._thread_holder = record

    def release(self, record: object) -> None:
        """Give the gate back if *record* holds it."""
        if self._thread_holder is record:
            self._thread_holder = None
            self._thread_lock.release()


class SwitchingWriteGate(WriteGate):
    """The sync engine's SQLite gate: a thread lock alone, or the loop's shared gate.

    A sync engine created before the app starts (a script, a test fixture, Alembic)
    stays the one engine once the app runs: while the app's event loop runs it takes
    the process's gate there (:meth:`use_loop`), shared with async sessions, and goes
    back to its own lock when the app stops (:meth:`use_threads`). Switch only while
    no sync transaction is open (the app's start and stop). Its writers wait under
    *monitor*'s counters (the sync pool's).
    """

    def __init__(self, timeout: float, monitor: PoolMonitor | None = None) -> None:
        super().__init__(timeout, monitor)
        self._threads = ThreadWriteGate(timeout, self.monitor)
        self._current: WriteGate = self._threads

    def use_loop(self, gate: WriteGate, loop: asyncio.AbstractEventLoop) -> None:
        """Take *gate* on *loop* from now on."""
        self._current = _LoopWriteGate(gate, loop, self.monitor)

    def use_threads(self) -> None:
        """Take the engine's own lock from now on (no event loop)."""
        self._current = self._threads

    @property
    def held(self) -> bool:
        """True while a transaction holds the gate."""
        return self._current.held

    def held_here(self) -> bool:
        """True when the unit of work this thread runs for holds the current gate."""
        return self._current.held_here()

    def acquire(self, record: ConnectionPoolEntry, monitor: PoolMonitor | None = None) -> None:
        """Take the current gate for *record*."""
        self._current.acquire(record, monitor)

    def release(self, record: object) -> None:
        """Give the current gate back if *record* holds it."""
        self._current.release(record)


def _engine_options(settings: DatabaseSettings, name: str) -> dict[str, Any]:
    connect_args: dict[str, Any]
    if settings.backend == "sqlite":
        # Connections move between worker threads, one thread at a time.
        connect_args = {
            "timeout": settings.sqlite_busy_timeout_ms / 1000,
            "check_same_thread": False,
        }
    else:
        # libpq counts connect_timeout in whole seconds.
        connect_args = {
            "connect_timeout": max(1, math.ceil(settings.connect_timeout)),
            "application_name": f"fastapi_dbpool:{name}",
            # No client-side deadline in psycopg: TCP's, for a network that drops packets.
            **libpq_no_answer_options(settings),
        }
        if settings.pgbouncer:
            # Behind PgBouncer in transaction mode: no server-side prepared statements
            # (psycopg names them per connection), and the deadline is SET LOCAL in
            # each transaction, a startup parameter being refused (see postgres/options.py).
            connect_args["prepare_threshold"] = None
        elif settings.statement_timeout_ms:
            connect_args["options"] = f"-c statement_timeout={settings.statement_timeout_ms}"
    return {
        "poolclass": MonitoredSyncPool,
        "pool_size": settings.pool_size,
        "max_overflow": settings.max_overflow,
        "pool_timeout": settings.pool_timeout,
        "pool_recycle": settings.pool_recycle,
        "pool_pre_ping": False,  # replaced by install_idle_ping
        "echo": settings.echo,
        "connect_args": connect_args,
    }


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
