"""Stopping SQLite statements: past their deadline, or when their task is gone.

aiosqlite runs each connection's statements in a thread of its own. Cancelling the
task that awaits a statement does not stop the statement: the thread runs it to the
end, and everything queued on that connection (the rollback, the close) waits behind
it, with SQLite's write lock held. A runaway query would hold the lock for minutes.

So each pooled connection gets a :class:`StatementGuard`, installed as SQLite's
progress handler (called every ``PROGRESS_STEPS`` virtual-machine steps, in the
connection's thread). It aborts the running statement, with ``sqlite3``'s
``OperationalError: interrupted``, when

* the statement has run past ``DB_STATEMENT_TIMEOUT_MS`` (the deadline is set as
  each statement starts and cleared when it ends); responses.py answers that 503
  ``statement_timeout``, as on PostgreSQL;
* the connection was abandoned: SQLAlchemy invalidates a connection whose statement
  was cancelled, and closes it. The flag is sticky, unlike ``interrupt()``, which is
  lost if the statement has not started in the thread yet when it is called.
"""

from __future__ import annotations

import inspect
import sqlite3
import time
from contextlib import suppress
from typing import Any

from sqlalchemy import event, exc
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import ConnectionPoolEntry

from .._compat import await_

__all__ = [
    "PROGRESS_STEPS",
    "StatementGuard",
    "abandon",
    "arm_deadline",
    "install_statement_guard",
]

# SQLite calls the guard every this many virtual-machine steps: about every 0.1 ms
# of work, often enough for a prompt stop, rare enough to cost under 1 % of it.
PROGRESS_STEPS = 1000

_GUARD = "fastapi_dbpool.statement_guard"


class StatementGuard:
    """SQLite progress handler of one connection: nonzero stops the running statement.

    Read in the connection's thread, written from the event loop's: each field is a
    single reference assignment, atomic under the GIL.
    """

    __slots__ = ("abandoned", "deadline")

    def __init__(self) -> None:
        self.abandoned = False
        self.deadline: float | None = None  # time.monotonic() value, None = no deadline

    def __call__(self) -> int:
        """SQLite's progress callback: non-zero interrupts the running statement."""
        deadline = self.deadline
        return int(self.abandoned or (deadline is not None and time.monotonic() > deadline))


def install_statement_guard(engine: Engine, statement_timeout_ms: int) -> None:
    """Give each of *engine*'s SQLite connections a guard; a deadline if the timeout is set.

    For the async engine (aiosqlite) and the sync one (sqlite3) alike.
    """
    timeout = statement_timeout_ms / 1000

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        guard = record.info[_GUARD] = StatementGuard()
        driver = record.driver_connection
        assert driver is not None  # set before the connect event fires
        _complete(driver.set_progress_handler(guard, PROGRESS_STEPS))

    if timeout > 0:

        @event.listens_for(engine, "before_cursor_execute")
        def _start(conn: Connection, *args: Any) -> None:
            arm_deadline(conn.info, timeout)

        @event.listens_for(engine, "after_cursor_execute")
        def _end(conn: Connection, *args: Any) -> None:
            arm_deadline(conn.info, None)

    @event.listens_for(engine, "invalidate")
    def _on_invalidate(dbapi_connection: Any, record: ConnectionPoolEntry, error: Any) -> None:
        abandon(record)


def arm_deadline(info: dict[Any, Any], timeout: float | None) -> None:
    """Give the statement about to run on the connection of *info* *timeout* seconds.

    *info* is the pool entry's ``info`` dict; None clears the deadline. Statements
    sent past SQLAlchemy's execution (direct connections) call this themselves.
    """
    guard = info.get(_GUARD)
    if guard is not None:
        guard.deadline = None if timeout is None else time.monotonic() + timeout


def abandon(record: ConnectionPoolEntry) -> None:
    """Stop whatever *record*'s connection runs, and roll back, before it is closed.

    Called when the connection is invalidated, just before SQLAlchemy closes it:

    * the guard's flag stops the running statement, or the next one, at its next
      progress call. Not ``interrupt()``: it stays armed while any statement of the
      connection is unfinished, and would abort the rollback too;
    * the explicit rollback ends the transaction. Without it, a statement still
      referenced from the cancelled task's traceback makes ``sqlite3`` close the
      connection as a "zombie" that keeps its transaction, and the write lock, until
      the garbage collector runs.
    """
    guard = record.info.get(_GUARD)
    if guard is not None:
        guard.abandoned = True
    driver = record.driver_connection
    if driver is None:
        return
    # Already closed or broken, or invalidated from outside the event loop (garbage
    # collection): then the close that follows is all that can be done.
    with suppress(ValueError, sqlite3.Error, exc.MissingGreenlet):
        _complete(driver.rollback())


def _complete(result: Any) -> None:
    # aiosqlite's methods return coroutines (awaited in SQLAlchemy's greenlet);
    # sqlite3's, used by the sync engine, have already run.
    if inspect.isawaitable(result):
        await_(result)
