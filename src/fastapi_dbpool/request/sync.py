"""Sync sessions for ``def`` endpoints that cannot deadlock against the threadpool.

The tutorial's shape, a sync ``get_db()`` generator with ``def`` dependencies and
endpoints, deadlocks under load (FastAPI issue #3205). Each ``def`` dependency and
endpoint runs in one of the threadpool's 40 threads, and a thread that asks the pool
for a connection blocks while holding its thread. Once as many requests wait for a
connection as there are threads, the requests that hold the connections cannot get a
thread to validate their response (FastAPI does that in the threadpool for ``def``
endpoints, before the generator's cleanup gives the connection back). Nothing moves
until the pool timeout fails the waiters with 500s, and the next wave deadlocks again.

Here a request's unit of work is built so that this cycle cannot form:

1. **Waiting happens on the event loop, never in a thread.** The dependency waits for
   one of ``pool_size + max_overflow`` slots with ``asyncio``, for up to
   ``DB_POOL_TIMEOUT`` seconds, then raises
   :class:`~fastapi_dbpool.errors.PoolTimeout` (a 503). A slot guarantees a free
   connection, so the checkout that follows in a worker thread does not queue. No
   thread waits for a connection, so no thread waits for a request that waits for a
   thread.
2. **One connection per request.** The session is bound to the one connection the
   slot paid for; however the request's code uses it, it cannot take a second.
3. **Threads for this work are limited to the pool's capacity.** Checkout, commit and
   close run under an ``anyio.CapacityLimiter`` of ``pool_size + max_overflow`` tokens,
   apart from the default threadpool, so they never queue behind unrelated ``def``
   endpoints.
4. **Nothing per router.** The dependency alone does all of this, on any route of any
   router however deeply it is included: no route class, no app-level step beyond
   ``Database.install(app)``. The session commits before the response is sent
   (function scope, like ``SessionDep``); it holds its connection while FastAPI
   validates the response in the threadpool, which cannot deadlock (points 1-3).

Objects the endpoint returns are detached by then: load what the response needs in
the endpoint. ``expire_on_commit`` is off, so loaded attributes stay readable.

On SQLite, sync and async sessions share the process's write gate: one writer at a
time, as described in :mod:`fastapi_dbpool.sqlite.gate`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from contextvars import ContextVar
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import anyio.to_thread
from anyio import CapacityLimiter
from fastapi import Depends
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session
from starlette.requests import HTTPConnection

from .._app import database_of
from ..errors import DBPoolError
from ..observe.leaks import endpoint_context, watch_for_leaks
from ..pool.cleanup import run_to_completion
from ..pool.monitor import PoolMonitor, PoolSnapshot
from ..pool.waiting import Waiting
from ..sqlite.gate import READ_ONLY_OPTION, WriteGate
from .sync_engine import create_sync_engine

if TYPE_CHECKING:
    from ..database import Database
    from .joined import OpenUnits

__all__ = [
    "SyncDatabase",
    "SyncReadSessionDep",
    "SyncSessionDep",
]

logger = logging.getLogger("fastapi_dbpool")

T = TypeVar("T")


class SyncDatabase:
    """A sync engine on a :class:`~fastapi_dbpool.Database`'s database, and its slots.

    ``Database.sync`` creates it at first use and the app's shutdown disposes of it.
    Its pool has the async pool's settings (``DB_POOL_SIZE``, ``DB_MAX_OVERFLOW``,
    ``DB_POOL_TIMEOUT``...) and connections of its own, through psycopg 3 or sqlite3.
    Requests get sessions from :data:`SyncSessionDep`; :meth:`begin` is the primitive
    behind it. Scripts, workers and sync background tasks use :meth:`session`.

    Args:
        database: The database whose settings and SQLite write gate it shares.
        loop: The app's event loop, where waiting and timers happen; None for a sync
            engine alone (``with database:``): then only :meth:`session` and
            :attr:`engine` are available, and on SQLite writers queue on a lock.
        monitor: The sync pool's monitor.
    """

    def __init__(
        self, database: Database, loop: asyncio.AbstractEventLoop | None, monitor: PoolMonitor
    ) -> None:
        settings = database.settings
        self.name = monitor.name
        self.capacity = settings.pool_size + settings.max_overflow
        self.timeout = settings.pool_timeout
        self.monitor = monitor
        self.engine, self._gate = create_sync_engine(settings, self.name, monitor)
        # SQLite: the loop's write gate, where a writing unit queues before its slot
        # (set while the app's loop serves requests; see use_loop).
        self._unit_gate: WriteGate | None = None
        self.monitor.attach(self.engine.pool)
        self._database = database
        self._joined: Connection | None = None
        self._read_only: dict[str, Any] = (
            {READ_ONLY_OPTION: True}
            if settings.backend == "sqlite"
            else {"postgresql_readonly": True}
        )
        self.leak_detector = watch_for_leaks(self.monitor, settings.leak_threshold_s, loop)
        self._loop: asyncio.AbstractEventLoop | None = None
        if loop is not None:
            self.use_loop(loop, database.write_gate)
        # One slot per connection, taken on the event loop: the pools' one waiting path.
        self._slots = Waiting(self.monitor, capacity=self.capacity, timeout=self.timeout)
        self._threads = CapacityLimiter(self.capacity)

    @property
    def _session_class(self) -> type[Session]:
        # Read at each session: the classes are decided when the app starts, maybe after
        # this engine was created (at import, before the models were).
        return self._database.session_classes[1]

    def use_loop(self, loop: asyncio.AbstractEventLoop, write_gate: WriteGate | None) -> None:
        """Serve requests on *loop* (the app started); on SQLite share its *write_gate*."""
        self._loop = loop
        if self._gate is not None:
            assert write_gate is not None, "the async engine creates the gate when it starts"
            self._gate.use_loop(write_gate, loop)
            self._unit_gate = write_gate

    def use_threads(self) -> None:
        """Back to sync use alone (the app stopped): scripts and fixtures go on working."""
        self._loop = None
        if self._gate is not None:
            self._gate.use_threads()
            self._unit_gate = None

    def pool_snapshot(self) -> PoolSnapshot:
        """The sync pool's state now (see :class:`~fastapi_dbpool.PoolSnapshot`)."""
        return self.monitor.snapshot()

    @contextmanager
    def session(self, *, read_only: bool = False) -> Iterator[Session]:
        """Open a sync session in its own transaction: commit on success, roll back on error.

        For sync code outside requests: scripts, CLI commands, test fixtures, ``def``
        background tasks. Blocks the calling thread while it waits for a connection
        (at most ``DB_POOL_TIMEOUT`` seconds, then PoolTimeout); never call it on the
        event loop's thread. A *read_only* session does not take SQLite's write lock
        and runs READ ONLY on PostgreSQL.

        It ends as :mod:`fastapi_dbpool.request.session`'s table says: a rollback that
        fails after the block raised is logged, and the block's error is raised.

        Raises:
            PoolTimeout: no connection became free within ``DB_POOL_TIMEOUT`` seconds.
        """
        with self.engine.connect() as connection:
            if read_only:
                connection.execution_options(**self._read_only)
            with self._session_class(bind=connection, expire_on_commit=False) as session:
                try:
                    yield session
                except BaseException:
                    self._rollback_quietly(session)
                    raise
                if read_only:
                    session.rollback()
                else:
                    session.commit()

    def _rollback_quietly(self, session: Session) -> None:
        _rollback_quietly(session, self.name)

    async def begin(self, *, read_only: bool = False) -> UnitOfWork:
        """Wait for a slot, then check out a connection for a new unit of work.

        A *read_only* unit does not take SQLite's write lock and runs READ ONLY on
        PostgreSQL. End it with :meth:`UnitOfWork.end`.

        Raises:
            PoolTimeout: no slot became free within ``DB_POOL_TIMEOUT`` seconds (on
                SQLite, a writer's wait for the write gate counts in those seconds).
            TooManyWaiting: ``DB_MAX_WAITING`` requests already wait for one.
        """
        if self._loop is None:
            raise DBPoolError(
                "this sync engine was started by `with database:` and has no event loop; "
                "request sessions need the app's lifespan (Database.install(app))"
            )
        # A writer queues for SQLite's gate before it takes a slot (and so a connection):
        # writers waiting for the lock must not hold the connections readers need.
        gated = None
        if self._unit_gate is not None and not read_only:
            gated = await self._unit_gate.acquire_for_unit(self.monitor)
        try:
            await self._take_slot()
        except BaseException:
            self._release_gate(gated)
            raise
        opening = asyncio.ensure_future(self.in_thread(self._open, read_only, gated))
        try:
            return await asyncio.shield(opening)
        except asyncio.CancelledError:
            # The checkout completes in its thread whatever happens here; end that unit.
            await run_to_completion(_end_when_open(opening))
            raise

    def in_thread(self, func: Callable[..., T], *args: Any) -> Coroutine[Any, Any, T]:
        """Run ``func(*args)`` in a worker thread of this database's capacity-limited lane."""
        return anyio.to_thread.run_sync(func, *args, limiter=self._threads)

    async def dispose(self) -> None:
        """Close the pool's connections (called when the app stops)."""
        await anyio.to_thread.run_sync(self.close)

    def close(self) -> None:
        """Close the pool's connections, blocking (``with database:`` ends)."""
        if self.leak_detector is not None:
            self.leak_detector.stop()
        self.engine.dispose()

    # -- slots ----------------------------------------------------------------------

    async def _take_slot(self) -> None:
        if self._slots.try_take():
            return
        started = time.perf_counter()
        await self._slots.take()
        self.monitor._waited(time.perf_counter() - started)

    def _release_gate(self, gated: object | None) -> None:
        """Give the write gate back for a unit that took it; callable from any thread."""
        gate, loop = self._unit_gate, self._loop
        if gated is None or gate is None or loop is None:
            return
        if _running_loop() is loop:
            gate.release(gated)
            return
        with suppress(RuntimeError):  # the loop is closed: the gate went with it
            loop.call_soon_threadsafe(gate.release, gated)

    def _release_slot(self) -> None:
        """Give a slot back; callable from any thread."""
        if self._loop is None:
            return
        with suppress(RuntimeError):  # the loop is closed: the slots went with it
            self._loop.call_soon_threadsafe(self._slots.give_back)

    # -- in the lane's worker threads ------------------------------------------------------

    def join(self, connection: Connection | None) -> None:
        """Run every session in a savepoint of *connection*'s transaction; None: stop.

        SQLAlchemy's "join a session into an external transaction" recipe, for tests
        (see :mod:`fastapi_dbpool.pytest_plugin`): a session's commit releases its
        savepoint, and the test's rollback undoes everything.
        """
        self._joined = connection

    def _open(self, read_only: bool, gated: object | None) -> UnitOfWork:
        if self._joined is not None:
            session = self._session_class(
                bind=self._joined, expire_on_commit=False, join_transaction_mode="create_savepoint"
            )
            borrowed = _Borrowed(self._joined, self._database.joined_units)
            return UnitOfWork(self, borrowed, session, read_only=read_only, gated=gated)
        try:
            connection = self.engine.connect()
        except BaseException:
            self._release_slot()
            self._release_gate(gated)
            raise
        try:
            if read_only:
                connection.execution_options(**self._read_only)
            session = self._session_class(bind=connection, expire_on_commit=False)
        except BaseException:
            connection.close()
            self._release_slot()
            self._release_gate(gated)
            raise
        return UnitOfWork(self, connection, session, read_only=read_only, gated=gated)


class UnitOfWork:
    """One request's sync session, bound to one connection and ended exactly once.

    Whoever ends it (the route's worker thread or the dependency's exit) claims it
    first, so it is never ended twice nor ended while its own thread still uses it.
    """

    def __init__(
        self,
        owner: SyncDatabase,
        connection: Connection | _Borrowed,
        session: Session,
        *,
        read_only: bool,
        gated: object | None = None,
    ) -> None:
        self.session = session
        self.read_only = read_only
        self._gated = gated  # the SQLite write gate's token, given back when it ends
        self._owner = owner
        self._connection = connection
        self._claim_lock = threading.Lock()
        self._claimed = False

    @property
    def ended(self) -> bool:
        """True once the unit is ending or has ended."""
        return self._claimed

    async def end(self, error: BaseException | None) -> None:
        """Commit (*error* None) or roll back, close, and give back connection and slot.

        A cancellation (or other non-``Exception``) may leave a worker thread still
        running with the session: then the connection is invalidated instead, so the
        server rolls its transaction back and no other request can get it.
        """
        if not self._claim():
            return
        if error is None or isinstance(error, Exception):
            await run_to_completion(self._owner.in_thread(self._end, error))
        else:
            await run_to_completion(self._owner.in_thread(self._abandon))

    def _claim(self) -> bool:
        with self._claim_lock:
            if self._claimed:
                return False
            self._claimed = True
            return True

    def _end(self, error: BaseException | None) -> None:
        # A read-only unit that succeeded is only closed: closing ends its transaction
        # without expiring the objects that the response has yet to serialise.
        session = self.session
        try:
            if error is None and not self.read_only:
                session.commit()
            elif error is not None:
                _rollback_quietly(session, self._owner.name)
        finally:
            try:
                session.close()
            finally:
                try:
                    self._connection.close()
                finally:
                    self._owner._release_slot()
                    self._owner._release_gate(self._gated)

    def _abandon(self) -> None:
        try:
            self._connection.invalidate()
            self._connection.close()
        except Exception:
            logger.warning(
                "closing an abandoned connection failed",
                exc_info=True,
                extra={"pool": self._owner.name, "event": "abandon_failed"},
            )
        finally:
            self._owner._release_slot()
            self._owner._release_gate(self._gated)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class _Borrowed:
    """A joined test connection lent to a unit of work: the test closes it, not the unit.

    The unit is counted open in *units* until its close (see request/joined.py).
    """

    def __init__(self, connection: Connection, units: OpenUnits) -> None:
        self.connection = connection
        self._units: OpenUnits | None = units
        units.begin("sync session")

    def close(self) -> None:
        """Keep the test's connection open; count the unit as ended."""
        units, self._units = self._units, None
        if units is not None:
            units.end("sync session")

    def invalidate(self) -> None:
        """Keep the test's connection: its transaction is rolled back at the test's end."""


async def _end_when_open(opening: asyncio.Future[UnitOfWork]) -> None:
    try:
        unit = await opening
    except Exception:
        return  # the checkout failed and gave its slot back
    await unit.end(asyncio.CancelledError())


# -- FastAPI dependencies -------------------------------------------------------------

_active: ContextVar[UnitOfWork | None] = ContextVar("fastapi_dbpool_sync_unit", default=None)


@asynccontextmanager
async def _request_unit(conn: HTTPConnection, *, read_only: bool) -> AsyncIterator[Session]:
    active = _active.get()
    if active is not None and not active.ended:
        raise DBPoolError(
            "this request already holds a sync session: use SyncSessionDep or "
            "SyncReadSessionDep, not both, so that a request holds one connection"
        )
    with endpoint_context(conn):
        unit = await database_of(conn.app).sync.begin(read_only=read_only)
        token = _active.set(unit)
        try:
            yield unit.session
        except BaseException as error:
            await unit.end(error)
            raise
        else:
            await unit.end(None)
        finally:
            with suppress(ValueError):  # finalised in another context: nothing to undo
                _active.reset(token)


async def _sync_session(conn: HTTPConnection) -> AsyncIterator[Session]:
    """Yield the request's sync session; commit after the endpoint, roll back if it raised.

    The wait for a connection happens here, on the event loop, bounded by
    ``DB_POOL_TIMEOUT`` (then 503). A failed commit becomes an error response.
    """
    async with _request_unit(conn, read_only=False) as session:
        yield session


async def _sync_read_session(conn: HTTPConnection) -> AsyncIterator[Session]:
    """Yield a read-only sync session: no SQLite write lock, READ ONLY on PostgreSQL."""
    async with _request_unit(conn, read_only=True) as session:
        yield session


SyncSessionDep = Annotated[Session, Depends(_sync_session, scope="function")]
SyncReadSessionDep = Annotated[Session, Depends(_sync_read_session, scope="function")]


def _rollback_quietly(session: Session, pool: str) -> None:
    """Roll *session* back after an error; log a rollback that fails, never raise it.

    The caller's error is the one that matters; on a broken connection SQLAlchemy
    invalidates it, so it does not go back to the pool dirty.
    """
    try:
        session.rollback()
    except Exception:
        logger.warning(
            "rollback failed after an error",
            exc_info=True,
            extra={"pool": pool, "event": "rollback_failed"},
        )
