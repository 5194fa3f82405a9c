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

Ordering matters. The gate is taken *after* the connection has been checked out and
released when the connection goes back to the pool. A holder of the gate therefore
never waits for a connection, so "holds the write lock, waits for the pool" cannot
happen; the opposite order deadlocks as soon as every pooled connection is held by a
task queued on the gate. Waiting for the gate is bounded by ``DB_POOL_TIMEOUT`` and
ends in :class:`~fastapi_dbpool.errors.PoolTimeout`, like waiting for a connection.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import ConnectionPoolEntry

from .._compat import await_, connection_record
from ..errors import PoolTimeout
from ..pool.waiting import acquire_within

__all__ = ["READ_ONLY_OPTION", "WriteGate", "configure_sqlite"]

# Execution option set on the engine that read-only sessions bind to.
READ_ONLY_OPTION = "fastapi_dbpool_read_only"


class WriteGate:
    """One writer at a time among this process's pooled SQLite connections."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._lock = asyncio.Lock()
        self._holder: ConnectionPoolEntry | None = None
        self.waits_total = 0
        self.wait_seconds_max = 0.0

    @property
    def held(self) -> bool:
        """True while a transaction holds the gate."""
        return self._lock.locked()

    def acquire(self, record: ConnectionPoolEntry) -> None:
        """Take the gate for *record*'s connection; called inside SQLAlchemy's greenlet."""
        await_(self.acquire_async(record))

    async def acquire_async(self, record: ConnectionPoolEntry) -> None:
        """Take the gate for *record*'s connection, from async code (direct connections).

        Raises:
            PoolTimeout: The gate stayed taken for ``DB_POOL_TIMEOUT`` seconds.
        """
        if self._holder is record:
            return  # a second transaction on a connection that still holds it
        started = time.perf_counter()
        try:
            await acquire_within(self._lock, self.timeout)  # not wait_for: see there
        except TimeoutError:
            raise PoolTimeout(
                f"database busy: another transaction held SQLite's write lock for more "
                f"than {self.timeout:.2f} s (DB_POOL_TIMEOUT); keep write transactions short"
            ) from None
        self._holder = record
        waited = time.perf_counter() - started
        self.waits_total += 1
        self.wait_seconds_max = max(self.wait_seconds_max, waited)

    def release(self, record: ConnectionPoolEntry) -> None:
        """Give the gate back if *record* holds it (its connection returned to the pool)."""
        if self._holder is record:
            self._holder = None
            self._lock.release()


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
