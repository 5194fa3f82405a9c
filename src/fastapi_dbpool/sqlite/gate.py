"""SQLite configured for a web server: WAL, a busy timeout, foreign keys, serialised writes.

SQLite allows one writer at a time. Left alone, concurrent writers fail with
``database is locked`` once ``busy_timeout`` runs out, and a transaction that read
first and then writes can fail at once, without waiting, because its snapshot is stale.
So writes are serialised here, in the process, by a :class:`WriteGate`:

* A transaction that may write begins with ``BEGIN IMMEDIATE`` (it takes SQLite's
  write lock up front, so it never has to upgrade a stale read snapshot), and only
  after taking the gate, so at most one connection of this process waits in SQLite's
  busy handler. Other processes (Alembic, a second worker) are covered by
  ``busy_timeout``.
* Read-only sessions use a plain ``BEGIN`` and never touch the gate: with WAL,
  readers do not wait for the writer.

Ordering matters: **nobody waits for the gate while holding a pooled connection.** A
unit of work that may write (a writing session, direct connection or sync session)
queues for the gate *before* it takes its connection, and gives both back when it
ends. So connections are only ever held by readers, which never wait for the gate, and
by the one writer that holds it:

* readers never wait for writers, even when every writer is queued behind another
  process's lock (they would otherwise hold every pooled connection while they queue);
* the gate's holder may wait for a connection, but only for one that a reader (or the
  holder itself) is about to give back, so "holds the gate, waits for the pool" cannot
  turn into a deadlock. A unit that opens a second writing unit inside itself waits for
  its own gate and gets :class:`~fastapi_dbpool.errors.PoolTimeout`, not a hang.

The unit that holds the gate is remembered in a context variable, which SQLAlchemy's
greenlets and the sync sessions' worker threads see too, so that the ``BEGIN`` of its
transactions knows the gate is already theirs. A transaction begun outside any unit (an
engine used directly) still takes the gate, for its connection, at ``BEGIN`` and gives
it back when the connection returns to the pool.

Waiting for the gate is waiting for a pool of one: it goes through the pools' own
:class:`~fastapi_dbpool.pool.waiting.Waiting`, under the counters of the pool the writer
is about to use. So a writer queued at the gate counts in that pool's ``waiting``, is
shed at once beyond ``DB_MAX_WAITING``, and on timeout counts in ``timeouts_total`` and
gets the pools' :class:`~fastapi_dbpool.errors.PoolTimeout`. A writer's two waits, for
the gate and then for a connection, share one deadline: ``DB_POOL_TIMEOUT`` from when it
began to wait for the gate.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from contextvars import ContextVar
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import ConnectionPoolEntry

from .._compat import await_, connection_record
from ..pool.monitor import PoolMonitor
from ..pool.waiting import Deadline, FifoPermits, Waiting, carry_deadline

__all__ = ["LOCK_NAME", "READ_ONLY_OPTION", "WriteGate", "configure_sqlite"]

# Execution option set on the engine that read-only sessions bind to.
READ_ONLY_OPTION = "fastapi_dbpool_read_only"

# What the gate stands for, as a timeout's message names it.
LOCK_NAME = "SQLite's write lock"

# The writing unit of work the current task (or thread working for it) runs in.
_UNIT: ContextVar[object | None] = ContextVar("fastapi_dbpool_write_unit", default=None)


class WriteGate:
    """One writer at a time among this process's pooled SQLite connections.

    Args:
        timeout: Seconds a writer may wait for the gate and then a connection
            (``DB_POOL_TIMEOUT``).
        monitor: The pool whose counters writers wait under unless they name another
            (the async pool's); a gate without one counts on a monitor of its own.
    """

    def __init__(self, timeout: float, monitor: PoolMonitor | None = None) -> None:
        self.timeout = timeout
        self.monitor = monitor if monitor is not None else PoolMonitor("sqlite-write-gate")
        # One turn for the whole process, queued for under each pool's counters.
        self._turn = FifoPermits(1)
        self._queues: dict[PoolMonitor, Waiting] = {}
        # A unit of work's token, or the connection record of a transaction begun outside one.
        self._holder: object | None = None
        # The holder's deadline, carried into its wait for a connection until it is spent.
        self._deadline: Deadline | None = None
        self.waits_total = 0
        self.wait_seconds_max = 0.0

    @property
    def held(self) -> bool:
        """True while a transaction holds the gate (or it was just handed to a waiter)."""
        return self._turn.free == 0

    @property
    def waiting(self) -> int:
        """Units of work queued for the gate now (none of them holds a connection)."""
        return self._turn.queued

    def queue_for(self, monitor: PoolMonitor | None = None) -> Waiting:
        """The gate's queue as *monitor*'s pool waits in it (default: :attr:`monitor`)."""
        monitor = self.monitor if monitor is None else monitor
        queue = self._queues.get(monitor)
        if queue is None:
            queue = self._queues[monitor] = Waiting(
                monitor, capacity=1, timeout=self.timeout, permits=self._turn, lock=LOCK_NAME
            )
        return queue

    def held_here(self) -> bool:
        """True when the unit of work running here holds the gate."""
        unit = _UNIT.get()
        return unit is not None and self._holder is unit

    @asynccontextmanager
    async def writing(self) -> AsyncIterator[object]:
        """Hold the gate for one writing unit of work; enter it *before* any checkout.

        Raises:
            TooManyWaiting: ``DB_MAX_WAITING`` callers already wait for the pool.
            PoolTimeout: The gate stayed taken for ``DB_POOL_TIMEOUT`` seconds.
        """
        unit = object()
        await self.acquire_async(unit)
        bound = _UNIT.set(unit)
        try:
            yield unit
        finally:
            with suppress(ValueError):  # ended in another context: nothing to undo
                _UNIT.reset(bound)
            self.release(unit)

    async def acquire_for_unit(self, monitor: PoolMonitor | None = None) -> object:
        """Take the gate for a new unit of work that runs in this context; return its token.

        For units that end in another thread (sync sessions): give the token back to
        :meth:`release` when the unit ends. The context keeps naming the token, which
        no longer matches once released.

        Args:
            monitor: The pool the unit will take its connection from (its counters).

        Raises:
            TooManyWaiting: ``DB_MAX_WAITING`` callers already wait for that pool.
            PoolTimeout: The gate stayed taken for ``DB_POOL_TIMEOUT`` seconds.
        """
        unit = object()
        await self.acquire_async(unit, monitor)
        _UNIT.set(unit)
        return unit

    def acquire(self, record: ConnectionPoolEntry, monitor: PoolMonitor | None = None) -> None:
        """Take the gate for *record*'s connection; called inside SQLAlchemy's greenlet."""
        await_(self.acquire_async(record, monitor, carry=False))

    async def acquire_async(
        self, holder: object, monitor: PoolMonitor | None = None, *, carry: bool = True
    ) -> None:
        """Take the gate for *holder*: a unit of work's token, or a connection's record.

        Args:
            holder: Who holds the gate until :meth:`release` with the same object.
            monitor: The pool whose counters the wait goes under (default: :attr:`monitor`).
            carry: Bound this context's next wait for a connection by what is left of
                ``DB_POOL_TIMEOUT`` (a unit of work, which takes its connection next);
                False for a connection already checked out.

        Raises:
            TooManyWaiting: ``DB_MAX_WAITING`` callers already wait for the pool.
            PoolTimeout: The gate stayed taken for ``DB_POOL_TIMEOUT`` seconds.
        """
        if self._holder is holder:
            return  # a second transaction of a holder that still holds it
        started = time.monotonic()
        deadline = Deadline(started + self.timeout)
        await self.queue_for(monitor).take(deadline)
        # Nothing awaits between the permit and here: a cancellation cannot strand it.
        self._holder = holder
        if carry:
            self._deadline = deadline
            carry_deadline(deadline)
        waited = time.monotonic() - started
        self.waits_total += 1
        self.wait_seconds_max = max(self.wait_seconds_max, waited)

    def release(self, holder: object) -> None:
        """Give the gate back if *holder* holds it (its unit ended, its connection returned)."""
        if self._holder is holder:
            self._holder = None
            if self._deadline is not None:
                # The unit's wait is over, connection or not: its deadline bounds nothing more.
                self._deadline.spent = True
                self._deadline = None
            self._turn.release()


def configure_sqlite(engine: Engine, gate: WriteGate, busy_timeout_ms: int) -> None:
    """Install the pragmas, transaction control and write gate on *engine* (sync side)."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        # Take transaction control away from the sqlite3 module, which would emit its
        # own deferred BEGIN before the first write; we emit BEGIN in _on_begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            cursor.execute("PRAGMA foreign_keys=ON")
            # With WAL, NORMAL is durable across application crashes and much faster;
            # only a power loss can roll back the last transactions.
            cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get(READ_ONLY_OPTION):
            conn.exec_driver_sql("BEGIN")
            return
        if gate.held_here():  # taken by the unit of work before its checkout
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            return
        # Begun outside a unit of work: take the gate for the connection, until checkin.
        record = connection_record(conn.connection)
        assert record is not None
        gate.acquire(record)
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            gate.release(record)
            raise

    @event.listens_for(engine, "checkin")
    def _on_checkin(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        gate.release(record)
