"""The pool itself: SQLAlchemy's queue pool, with fair waiting and errors that name settings.

Everything is the stock ``AsyncAdaptedQueuePool`` (or ``QueuePool`` for threads) except
the one method where a caller waits for a connection (``_do_get``) and the one where a
connection comes back (``_do_return_conn``): there the pool goes through
:class:`~.waiting.Waiting`, so that callers queue first come, first served, the queue
is bounded by ``DB_MAX_WAITING``, and a timeout raises
:class:`~fastapi_dbpool.errors.PoolTimeout` instead of SQLAlchemy's ``TimeoutError``.
Statistics come from pool events (:mod:`.monitor`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy import exc
from sqlalchemy.pool import (
    AsyncAdaptedQueuePool,
    ConnectionPoolEntry,
    Pool,
    PoolProxiedConnection,
)
from sqlalchemy.util.queue import Queue

from .._compat import await_
from ..errors import ConnectFailed
from .monitor import PoolMonitor
from .waiting import Waiting

__all__ = ["MonitoredPool", "MonitoredSyncPool", "monitor_of"]

# SQLAlchemy's pool logs "Pool disposed. ... Current Overflow: -10" at INFO on every
# dispose, which an app logging at INFO prints at each shutdown. The pools log to this
# logger instead, WARNING by default: set it to INFO (or use echo_pool) to see them.
POOL_LOGGER = logging.getLogger("fastapi_dbpool.pool.sqlalchemy")
if POOL_LOGGER.level == logging.NOTSET:
    POOL_LOGGER.setLevel(logging.WARNING)


class MonitoredPool(AsyncAdaptedQueuePool):
    """``AsyncAdaptedQueuePool`` whose callers wait in :class:`~.waiting.Waiting`.

    One permit per connection the pool may hand out, FIFO: a caller arriving while
    others wait queues behind them. The queue inside SQLAlchemy's pool is not fair (a
    newcomer takes a just-returned connection before the woken waiter runs, which sends
    that waiter to the back), and under load that barging turns into multi-second tail
    latency. Threads (:class:`MonitoredSyncPool`) cannot await a permit: they wait in
    SQLAlchemy's thread-safe queue, counted and bounded by the same :class:`Waiting`.
    """

    monitor: PoolMonitor
    waiting: Waiting

    @property
    def max_overflow(self) -> int:
        """Overflow connections allowed beyond ``size()``."""
        return max(self._max_overflow, 0)

    @property
    def capacity(self) -> int:
        """The most connections the pool hands out at once."""
        return self.size() + self.max_overflow

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not self.echo:
            self.logger = POOL_LOGGER

    def use_monitor(self, monitor: PoolMonitor) -> None:
        """Report to *monitor* and wait through its :class:`Waiting` (done once, at start)."""
        self.monitor = monitor
        self.waiting = Waiting(monitor, capacity=self.capacity, timeout=self._timeout)

    def recreate(self) -> MonitoredPool:
        """Recreate the pool (on dispose) keeping its monitor."""
        new = super().recreate()
        assert isinstance(new, MonitoredPool)
        # Listeners travel with the pool's dispatch; only the references move.
        new.use_monitor(self.monitor)
        self.monitor._pool = new
        return new

    def _do_get(self) -> ConnectionPoolEntry:
        if not self._is_asyncio:
            return self._do_get_threaded()
        waiting = self.waiting
        started = time.perf_counter()
        if not waiting.try_take():
            # In SQLAlchemy's greenlet: await the permit on the event loop.
            await_(waiting.take())
        try:
            entry = super()._do_get()
        except exc.TimeoutError:
            # A permit guarantees a free slot; this only happens if the permits and the
            # pool disagree (a connection handed out outside this method).
            waiting.give_back()
            raise waiting.timed_out() from None
        except BaseException:
            waiting.give_back()
            raise
        self.monitor._waited(time.perf_counter() - started)
        return entry

    def _do_get_threaded(self) -> ConnectionPoolEntry:
        waiting = self.waiting
        started = time.perf_counter()
        if self.checkedout() < self.capacity:
            entry = super()._do_get()
        else:
            with waiting.queued():
                try:
                    entry = super()._do_get()
                except exc.TimeoutError:
                    raise waiting.timed_out() from None
        self.monitor._waited(time.perf_counter() - started)
        return entry

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        try:
            super()._do_return_conn(record)
        finally:
            if self._is_asyncio:
                self.waiting.give_back()

    def connect(self) -> PoolProxiedConnection:
        """Check a connection out; raise ConnectFailed when no connection can be opened.

        Wrapped here, around the whole checkout, and not only in ``_do_get``: when a
        pooled connection fails its pre-ping, SQLAlchemy reconnects inside the checkout,
        and a refused reconnect would otherwise escape as a bare ``OSError`` (a 500).
        """
        try:
            return super().connect()
        except self._connect_errors() as error:
            # The driver could not reach the server (refused, unreachable, slower than
            # DB_CONNECT_TIMEOUT), or the server (or a PgBouncer) refused the session.
            # Its message can name the host or user: keep it in the chain for the
            # logs, out of the message that may reach a client.
            raise ConnectFailed(
                f"could not connect to the database ({type(error).__name__}); "
                "check DATABASE_URL and that the server is up, or raise DB_CONNECT_TIMEOUT"
            ) from error

    def _connect_errors(self) -> tuple[type[BaseException], ...]:
        # Network errors, and the driver's own errors raised while opening a session
        # (authentication, a refused startup parameter, too many clients).
        dbapi = getattr(self._dialect, "loaded_dbapi", None)
        driver_error = getattr(dbapi, "Error", None)
        if isinstance(driver_error, type) and issubclass(driver_error, BaseException):
            return (OSError, TimeoutError, driver_error)
        return (OSError, TimeoutError)


class MonitoredSyncPool(MonitoredPool):
    """:class:`MonitoredPool` for threads: SQLAlchemy's thread-safe queue, not asyncio's."""

    _is_asyncio = False
    _queue_class = Queue  # type: ignore[assignment]  # generic class vs. its instance type


def monitor_of(pool: Pool) -> PoolMonitor | None:
    """Return the monitor attached to *pool*, if it is a :class:`MonitoredPool`."""
    return pool.monitor if isinstance(pool, MonitoredPool) else None
