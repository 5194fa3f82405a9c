"""Units of work on a test's joined connection (:meth:`Database.join`).

While a test holds a connection in a transaction it will roll back, every unit of work
runs on that connection instead of one from the pool:

* sessions in a savepoint (SQLAlchemy's ``join_transaction_mode="create_savepoint"``,
  set up by ``Database.join`` and ``database.sync.join``);
* direct connections as :class:`JoinedConnection`: a writing unit's ``BEGIN`` becomes a
  ``SAVEPOINT``, its ``COMMIT`` a ``RELEASE SAVEPOINT`` and its ``ROLLBACK`` a
  ``ROLLBACK TO SAVEPOINT``; ``execute_committed()`` runs in a savepoint of its own;
  read-only units run plain statements. Nothing is checked out of the pool and the
  SQLite write gate is not taken: the test's connection is the only one writing, and a
  unit that queued for the gate behind it would wait for the test's end.

Since nothing is checked out, a unit left open (a session or connection never closed,
work still running when the test ends) does not show in the pool's stats;
:class:`OpenUnits` counts them instead, and the pytest plugin fails the test when any
is left.

Units on one joined connection must not run concurrently: the connection runs one
statement at a time, and savepoints nest in the order they are taken.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from .direct import DirectConnection, StatementCache

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection
    from sqlalchemy.sql.base import Executable

    from ..database import Database

__all__ = ["JoinedConnection", "OpenUnits"]

T = TypeVar("T")

logger = logging.getLogger("fastapi_dbpool")

# Savepoint names, unique in the process: units may nest (a handler's connection inside
# a test's own unit), and each must release its own.
_names = itertools.count(1)


class OpenUnits:
    """Units of work begun on a joined connection and not ended yet, by kind."""

    def __init__(self) -> None:
        self._open: Counter[str] = Counter()
        # Sync units begin and end in worker threads.
        self._lock = threading.Lock()

    def begin(self, kind: str) -> None:
        """Count a unit of *kind* (``"session"``, ``"connection"``...) as open."""
        with self._lock:
            self._open[kind] += 1

    def end(self, kind: str) -> None:
        """Count a unit of *kind* as ended."""
        with self._lock:
            self._open[kind] -= 1

    @property
    def open(self) -> int:
        """How many units are open."""
        with self._lock:
            return sum(self._open.values())

    def describe(self) -> str:
        """The open units, e.g. ``"1 session, 2 connection"``."""
        with self._lock:
            return ", ".join(
                f"{count} {kind}" for kind, count in sorted(self._open.items()) if count
            )

    @asynccontextmanager
    async def track(self, unit: AbstractAsyncContextManager[T], kind: str) -> AsyncIterator[T]:
        """Enter *unit*, counted as open until it has exited."""
        self.begin(kind)
        try:
            async with unit as handle:
                yield handle
        finally:
            self.end(kind)


class JoinedConnection(DirectConnection):
    """A :class:`DirectConnection` on the test's joined connection, in savepoints.

    Statements still run on the driver connection directly; the savepoint statements go
    through SQLAlchemy's connection, which opens the test's transaction on the server
    first if no statement has yet (asyncpg begins lazily).
    """

    __slots__ = ("_joined", "_savepoint")

    def __init__(
        self,
        database: Database,
        cache: StatementCache,
        *,
        read_only: bool,
        joined: AsyncConnection,
    ) -> None:
        super().__init__(database, cache, read_only=read_only)
        self._joined = joined
        self._savepoint: str | None = None

    @property
    def _needs_transaction(self) -> bool:
        # Reads run plain statements, in the test's transaction: no BEGIN READ ONLY.
        return not self._read_only

    async def _take_gate(self) -> None:
        """Take nothing: the test's connection is the only writer (see the module doc)."""

    async def _checkout(self) -> None:
        fairy = await self._joined.get_raw_connection()
        self._fairy = fairy
        self._driver = fairy.driver_connection

    async def _checkin(self, invalidate: BaseException | None) -> None:
        # The test's connection stays with the test, which rolls it back at its end.
        self._fairy = self._driver = None
        self._in_transaction = False
        self._broken = None
        self._savepoint = None

    async def _begin(self) -> None:
        name = f"dbpool_direct_{next(_names)}"
        await self._joined.exec_driver_sql(f"SAVEPOINT {name}")
        self._savepoint = name
        self._in_transaction = True

    async def _end_savepoint(self, *, commit: bool) -> None:
        name = self._savepoint
        assert name is not None
        if not commit:
            await self._joined.exec_driver_sql(f"ROLLBACK TO SAVEPOINT {name}")
        await self._joined.exec_driver_sql(f"RELEASE SAVEPOINT {name}")
        self._savepoint = None
        self._in_transaction = False

    async def _undo_savepoint_quietly(self) -> None:
        # After an error, which is the one that matters; what is left open is undone by
        # the test's rollback.
        try:
            await self._end_savepoint(commit=False)
        except Exception as error:
            logger.warning("rollback to savepoint failed: %s", type(error).__name__)

    async def execute_committed(
        self, statement: Executable, /, **params: Any
    ) -> list[dict[str, Any]]:
        """Run one writing statement in a savepoint of its own, released when it returns.

        Raises:
            WriteInReadSession: The connection is read-only.
            TransactionOpen: An earlier statement of this connection opened a
                transaction (as :meth:`DirectConnection.execute_committed`).
        """
        self._check_committable()
        plan, extracted = self._cache.plan(statement)
        args = plan.arguments(params, extracted)
        if self._fairy is None:
            await self._checkout()
        await self._begin()
        try:
            records = await self._run(plan.sql, args)
        except Exception as error:
            translated = self._translate(error, plan.sql, args)
            await self._undo_savepoint_quietly()
            raise translated from error
        except BaseException as error:
            self._broken = error  # cancelled mid-statement: the unit's close rolls back
            raise
        await self._end_savepoint(commit=True)
        return plan.rows(records)

    async def close(self, *, commit: bool) -> None:
        """Release the unit's savepoint (*commit*) or roll back to it; keep the connection.

        A failed release is raised, after rolling back to the savepoint.
        """
        if self._fairy is None:
            return
        try:
            if self._savepoint is None:
                return
            if not commit or self._broken is not None:
                await self._undo_savepoint_quietly()
                return
            try:
                await self._end_savepoint(commit=True)
            except Exception:
                await self._undo_savepoint_quietly()
                raise
        finally:
            await self._release()
