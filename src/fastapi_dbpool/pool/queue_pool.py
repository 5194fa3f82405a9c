"""The pool itself: SQLAlchemy's queue pool, with fair waiting and errors that name settings.

Everything is the stock ``AsyncAdaptedQueuePool`` (or ``QueuePool`` for threads) except
the one method where a caller waits for a connection and the one where a connection
comes back (SQLAlchemy's private ``_do_get`` / ``_do_return_conn``, reached through
:class:`~fastapi_dbpool._compat.QueuePoolHooks`): there the pool goes through
:class:`~.waiting.Waiting`, so that callers queue first come, first served, the queue
is bounded by ``DB_MAX_WAITING``, and a timeout raises
:class:`~fastapi_dbpool.errors.PoolTimeout` instead of SQLAlchemy's ``TimeoutError``.
Statistics come from pool events (:mod:`.monitor`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import exc
from sqlalchemy.pool import ConnectionPoolEntry, Pool, PoolProxiedConnection

from .._compat import QueuePoolHooks, await_, driver_errors, threaded
from .._compat import max_overflow as max_overflow_of
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


class MonitoredPool(QueuePoolHooks):
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
        return max_overflow_of(self)

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
        self.waiting = Waiting(monitor, capacity=self.capacity, timeout=self.timeout())

    def recreate(self) -> MonitoredPool:
        """Recreate the pool (on dispose) keeping its monitor."""
        new = super().recreate()
        assert isinstance(new, MonitoredPool)
        # Listeners travel with the pool's dispatch; only the references move.
        new.use_monitor(self.monitor)
        self.monitor._pool = new
        return new

    def get_record(self, take: Callable[[], ConnectionPoolEntry]) -> ConnectionPoolEntry:
        """Wait for a permit (FIFO, bounded), then take a record with SQLAlchemy's *take*."""
        if not self.is_asyncio:
            return self._get_threaded(take)
        waiting = self.waiting
        started = time.perf_counter()
        if not waiting.try_take():
            # In SQLAlchemy's greenlet: await the permit on the event loop.
            await_(waiting.take())
        try:
            entry = take()
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

    def _get_threaded(self, take: Callable[[], ConnectionPoolEntry]) -> ConnectionPoolEntry:
        waiting = self.waiting
        started = time.perf_counter()
        if self.checkedout() < self.capacity:
            entry = take()
        else:
            with waiting.queued():
                try:
                    entry = take()
                except exc.TimeoutError:
                    raise waiting.timed_out() from None
        self.monitor._waited(time.perf_counter() - started)
        return entry

    def return_record(
        self, record: ConnectionPoolEntry, put: Callable[[ConnectionPoolEntry], None]
    ) -> None:
        """Give *record* back with SQLAlchemy's *put*, then its permit."""
        try:
            put(record)
        finally:
            if self.is_asyncio:
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
        return (OSError, TimeoutError, *driver_errors(self.engine_dialect))


@threaded
class MonitoredSyncPool(MonitoredPool):
    """:class:`MonitoredPool` for threads: SQLAlchemy's thread-safe queue, not asyncio's."""


def monitor_of(pool: Pool) -> PoolMonitor | None:
    """Return the monitor attached to *pool*, if it is a :class:`MonitoredPool`."""
    return pool.monitor if isinstance(pool, MonitoredPool) else None
