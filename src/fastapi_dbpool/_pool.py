"""Pool instrumentation: what the pool is doing, fed by SQLAlchemy's pool events.

Counts of checkouts, connects and invalidations, and the time each connection is
held, come from :class:`~sqlalchemy.events.PoolEvents`. Two things those events
cannot see: how many callers are *waiting* for a connection, and how long they
waited. For those, and to answer a timeout with our own error, :class:`MonitoredPool`
overrides the one method where a caller waits (``_do_get``). Everything else is the
stock ``AsyncAdaptedQueuePool``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event, exc
from sqlalchemy.pool import (
    AsyncAdaptedQueuePool,
    ConnectionPoolEntry,
    Pool,
    PoolProxiedConnection,
)
from sqlalchemy.util import await_

from .errors import ConnectFailed, PoolTimeout, TooManyWaiting

__all__ = ["FifoPermits", "MonitoredPool", "PoolMonitor", "PoolSnapshot", "acquire_within"]

# A callback that receives one duration in seconds (checkout wait or hold time).
DurationObserver = Callable[[float], None]

_CHECKED_OUT_AT = "fastapi_dbpool.checked_out_at"


@dataclass(frozen=True, slots=True)
class PoolSnapshot:
    """Pool state at one instant. Gauges are current values, ``*_total`` count since start.

    Attributes:
        name: The pool's label, ``"primary"`` or ``"replica"``.
        size: Connections the pool keeps (``DB_POOL_SIZE``).
        max_overflow: Extra connections allowed under load (``DB_MAX_OVERFLOW``).
        checked_out: Connections in use now.
        overflow: Overflow connections open now (0 while within ``size``).
        idle: Open connections waiting in the pool.
        waiting: Callers waiting for a connection now.
        checkouts_total: Connections handed out.
        timeouts_total: Callers that gave up after ``DB_POOL_TIMEOUT`` or were shed.
        connects_total: New server connections opened.
        invalidations_total: Connections thrown away as broken.
        leaks_total: Checkouts held past ``DB_LEAK_THRESHOLD_S`` (leak detection).
        wait_seconds_total: Time spent waiting, summed over callers.
        wait_seconds_max: Longest single wait.
    """

    name: str
    size: int
    max_overflow: int
    checked_out: int
    overflow: int
    idle: int
    waiting: int
    checkouts_total: int
    timeouts_total: int
    connects_total: int
    invalidations_total: int
    leaks_total: int
    wait_seconds_total: float
    wait_seconds_max: float

    @property
    def capacity(self) -> int:
        """The most connections the pool may have open at once."""
        return self.size + self.max_overflow

    @property
    def saturated(self) -> bool:
        """True when every connection is in use, so a new caller would wait."""
        return self.checked_out >= self.capacity


class PoolMonitor:
    """Live counters of one pool, updated by pool events and by :class:`MonitoredPool`.

    Observers added with :meth:`on_wait` and :meth:`on_hold` receive each duration
    (seconds) as it happens; the metrics module feeds its histograms from them.
    """

    def __init__(self, name: str, *, max_waiting: int = 0) -> None:
        self.name = name
        self.max_waiting = max_waiting
        self.waiting = 0
        self.checkouts_total = 0
        self.timeouts_total = 0
        self.connects_total = 0
        self.invalidations_total = 0
        self.leaks_total = 0  # incremented by leak detection
        self.wait_seconds_total = 0.0
        self.wait_seconds_max = 0.0
        self._pool: MonitoredPool | None = None
        self._wait_observers: list[DurationObserver] = []
        self._hold_observers: list[DurationObserver] = []
        self._checkout_observers: list[Callable[[ConnectionPoolEntry], None]] = []
        self._checkin_observers: list[Callable[[ConnectionPoolEntry, float], None]] = []

    def on_wait(self, observer: DurationObserver) -> None:
        """Call *observer* with each caller's wait for a connection, in seconds."""
        self._wait_observers.append(observer)

    def on_hold(self, observer: DurationObserver) -> None:
        """Call *observer* with how long each connection was held, in seconds."""
        self._hold_observers.append(observer)

    def on_checkout(self, observer: Callable[[ConnectionPoolEntry], None]) -> None:
        """Call *observer* with the pool entry each time a connection is handed out."""
        self._checkout_observers.append(observer)

    def on_checkin(self, observer: Callable[[ConnectionPoolEntry, float], None]) -> None:
        """Call *observer* with the entry and its hold time when a connection returns."""
        self._checkin_observers.append(observer)

    def attach(self, pool: MonitoredPool) -> None:
        """Listen to *pool*'s events. Called once, by :class:`~fastapi_dbpool.Database`."""
        self._pool = pool
        pool.monitor = self
        event.listen(pool, "connect", self._on_connect)
        event.listen(pool, "checkout", self._on_checkout)
        event.listen(pool, "checkin", self._on_checkin)
        event.listen(pool, "invalidate", self._on_invalidate)

    def snapshot(self) -> PoolSnapshot:
        """Return the pool's state now. Cheap: reads counters, takes no lock."""
        pool = self._pool
        size = pool.size() if pool is not None else 0
        overflow = max(pool.overflow(), 0) if pool is not None else 0
        return PoolSnapshot(
            name=self.name,
            size=size,
            max_overflow=pool.max_overflow if pool is not None else 0,
            checked_out=pool.checkedout() if pool is not None else 0,
            overflow=overflow,
            idle=pool.checkedin() if pool is not None else 0,
            waiting=self.waiting,
            checkouts_total=self.checkouts_total,
            timeouts_total=self.timeouts_total,
            connects_total=self.connects_total,
            invalidations_total=self.invalidations_total,
            leaks_total=self.leaks_total,
            wait_seconds_total=self.wait_seconds_total,
            wait_seconds_max=self.wait_seconds_max,
        )

    # -- pool event listeners -----------------------------------------------------------

    def _on_connect(self, dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        self.connects_total += 1

    def _on_checkout(self, dbapi_connection: Any, record: ConnectionPoolEntry, proxy: Any) -> None:
        self.checkouts_total += 1
        record.info[_CHECKED_OUT_AT] = time.perf_counter()
        for observer in self._checkout_observers:
            observer(record)

    def _on_checkin(self, dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        started = record.info.pop(_CHECKED_OUT_AT, None)
        held = time.perf_counter() - started if started is not None else 0.0
        if started is not None:
            for hold_observer in self._hold_observers:
                hold_observer(held)
        for observer in self._checkin_observers:
            observer(record, held)

    def _on_invalidate(
        self, dbapi_connection: Any, record: ConnectionPoolEntry, error: Any
    ) -> None:
        self.invalidations_total += 1

    # -- called by MonitoredPool --------------------------------------------------------

    def _waited(self, seconds: float) -> None:
        self.wait_seconds_total += seconds
        if seconds > self.wait_seconds_max:
            self.wait_seconds_max = seconds
        for observer in self._wait_observers:
            observer(seconds)


class FifoPermits:
    """Permits handed out first come, first served, without an await when one is free.

    ``asyncio.Semaphore`` is FIFO too, but taking even a free permit is a coroutine,
    which inside the pool (running in SQLAlchemy's greenlet) costs two greenlet
    switches per checkout. Here a free permit is taken by :meth:`try_acquire`, a plain
    call; only a caller that must wait awaits. A returned permit goes straight to the
    oldest waiter, so a newcomer cannot take it first.
    """

    def __init__(self, count: int) -> None:
        self._free = count
        self._waiters: deque[asyncio.Future[None]] = deque()

    def try_acquire(self) -> bool:
        """Take a permit if one is free and nobody queues for one; never waits."""
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return True
        return False

    async def acquire(self, timeout: float) -> None:
        """Queue for a permit; raise ``TimeoutError`` after *timeout* seconds."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        # A bare timer, not asyncio.timeout() (a context object, a reschedule and a
        # task lookup per call): under load nearly every checkout waits here.
        timer = loop.call_later(timeout, _expire, waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.release()  # handed a permit just as we gave up: pass it on
            else:
                waiter.cancel()
                with suppress(ValueError):  # already taken off by release()
                    self._waiters.remove(waiter)
            raise
        finally:
            timer.cancel()

    def release(self) -> None:
        """Return a permit: to the oldest waiter if there is one, else to the free count."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class MonitoredPool(AsyncAdaptedQueuePool):
    """``AsyncAdaptedQueuePool`` that counts waiters and sheds load past ``max_waiting``.

    A timeout raises :class:`~fastapi_dbpool.errors.PoolTimeout`, which names the
    settings to change, instead of SQLAlchemy's ``TimeoutError``.
    """

    monitor: PoolMonitor

    @property
    def max_overflow(self) -> int:
        """Overflow connections allowed beyond ``size()``."""
        return max(self._max_overflow, 0)

    def recreate(self) -> MonitoredPool:
        """Recreate the pool (on dispose) keeping its monitor."""
        new = super().recreate()
        assert isinstance(new, MonitoredPool)
        # Listeners travel with the pool's dispatch; only the references move.
        new.monitor = self.monitor
        self.monitor._pool = new
        return new

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # One permit per connection the pool may hand out, FIFO (FifoPermits): a caller
        # arriving while others wait queues behind them. The queue inside
        # SQLAlchemy's pool is not (a newcomer takes a just-returned connection before
        # the woken waiter runs, which sends that waiter to the back), and under load
        # that barging turns into multi-second tail latency.
        # Threads (the sync pool) queue fairly enough in SQLAlchemy's own queue and
        # cannot await a permit: they keep the plain path.
        self._permits = FifoPermits(self.size() + self.max_overflow) if self._is_asyncio else None

    def _do_get(self) -> ConnectionPoolEntry:
        monitor = self.monitor
        permits = self._permits
        if permits is None:
            return self._do_get_threaded()
        if permits.try_acquire():
            # A free permit and nobody queued: no waiting to account for.
            started = time.perf_counter()
            entry = self._get_with_permit()
            monitor._waited(time.perf_counter() - started)
            return entry
        self._shed_if_queue_full()
        monitor.waiting += 1
        started = time.perf_counter()
        try:
            # FifoPermits.acquire gives back a permit handed over as the caller was
            # cancelled and re-raises the cancellation: none is lost (see acquire_within).
            await_(permits.acquire(self._timeout))
        except TimeoutError:
            monitor.timeouts_total += 1
            raise self._timeout_error() from None
        finally:
            monitor.waiting -= 1
        entry = self._get_with_permit()
        monitor._waited(time.perf_counter() - started)
        return entry

    def _get_with_permit(self) -> ConnectionPoolEntry:
        try:
            return self._get_or_connect()
        except exc.TimeoutError:
            self._release_permit()
            self.monitor.timeouts_total += 1
            raise self._timeout_error() from None
        except BaseException:
            self._release_permit()
            raise

    def _shed_if_queue_full(self) -> None:
        """Raise TooManyWaiting, counted as a timeout, when DB_MAX_WAITING callers wait."""
        monitor = self.monitor
        if monitor.max_waiting and monitor.waiting >= monitor.max_waiting:
            monitor.timeouts_total += 1
            raise self._too_many_waiting()

    def _release_permit(self) -> None:
        if self._permits is not None:
            self._permits.release()

    def _do_get_threaded(self) -> ConnectionPoolEntry:
        """The thread-safe path: count waiters and shed load around SQLAlchemy's queue."""
        monitor = self.monitor
        if self.checkedout() < self.size() + self.max_overflow:
            started = time.perf_counter()
            entry = super()._do_get()
            monitor._waited(time.perf_counter() - started)
            return entry
        self._shed_if_queue_full()
        monitor.waiting += 1
        started = time.perf_counter()
        try:
            entry = super()._do_get()
        except exc.TimeoutError:
            monitor.timeouts_total += 1
            raise self._timeout_error() from None
        finally:
            monitor.waiting -= 1
        monitor._waited(time.perf_counter() - started)
        return entry

    def _too_many_waiting(self) -> TooManyWaiting:
        return TooManyWaiting(
            f"database busy: {self.monitor.waiting} requests already wait for a connection "
            f"(DB_MAX_WAITING={self.monitor.max_waiting}); raise DB_POOL_SIZE or DB_MAX_WAITING"
        )

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        try:
            super()._do_return_conn(record)
        finally:
            if self._permits is not None:
                self._permits.release()

    def _timeout_error(self) -> PoolTimeout:
        return PoolTimeout(
            f"database busy: no connection became free within {self._timeout:.2f} s "
            f"(DB_POOL_TIMEOUT); all {self.size()} + {self.max_overflow} overflow "
            "connections are in use; raise DB_POOL_SIZE or DB_MAX_OVERFLOW, "
            "or hold connections for less time"
        )

    def _get_or_connect(self) -> ConnectionPoolEntry:
        # Connection errors become ConnectFailed in connect(), around the whole checkout.
        return super()._do_get()

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


async def acquire_within(primitive: asyncio.Semaphore | asyncio.Lock, timeout: float) -> None:
    """Acquire *primitive*, raising TimeoutError after *timeout* seconds.

    Not ``asyncio.wait_for``: on Python 3.11, when the caller is cancelled just as the
    acquire completes, wait_for returns normally and the cancellation is lost. The
    request then runs on, past the client that left or the deadline that fired.
    ``asyncio.timeout`` re-raises it, and the primitive's own acquire gives back what
    it got.
    """
    async with asyncio.timeout(timeout):
        await primitive.acquire()


def monitor_of(pool: Pool) -> PoolMonitor | None:
    """Return the monitor attached to *pool*, if it is a :class:`MonitoredPool`."""
    return pool.monitor if isinstance(pool, MonitoredPool) else None
