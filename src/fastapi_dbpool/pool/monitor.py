"""Pool statistics: what a pool is doing, fed by SQLAlchemy's pool events.

Counts of checkouts, connects and invalidations, and the time each connection is
held, come from :class:`~sqlalchemy.events.PoolEvents`. How many callers *wait* and
for how long, which the events cannot see, is reported by the waiting path
(:mod:`.waiting`). Stat keys are declared once, in :class:`PoolSnapshot`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy.pool import ConnectionPoolEntry, Pool, QueuePool

from .._compat import max_overflow as max_overflow_of

__all__ = ["MONITOR_INFO_KEY", "DurationObserver", "PoolMonitor", "PoolSnapshot"]

# A callback that receives one duration in seconds (checkout wait or hold time).
DurationObserver = Callable[[float], None]

_CHECKED_OUT_AT = "fastapi_dbpool.checked_out_at"
# Key of a session's ``info`` that holds the monitor of its pool.
MONITOR_INFO_KEY = "fastapi_dbpool.monitor"


@dataclass(frozen=True, slots=True)
class PoolSnapshot:
    """Pool state at one instant. Gauges are current values, ``*_total`` count since start.

    Attributes:
        name: The pool's label in stats and metrics: the Database's name for its
            async pool (``"primary"`` by default, ``"replica"`` for the replica's), with
            ``-sync`` for the sync pool and ``-probe`` for the health probe's
            (``"primary-sync"``, ``"primary-probe"``, ``"replica-sync"``...).
        size: Connections the pool keeps (``DB_POOL_SIZE``).
        max_overflow: Extra connections allowed under load (``DB_MAX_OVERFLOW``).
        checked_out: Connections in use now.
        overflow: Overflow connections open now (0 while within ``size``).
        idle: Open connections waiting in the pool.
        waiting: Callers waiting for a connection now, and on SQLite this pool's writers
            queued for the write gate.
        checkouts_total: Connections handed out.
        timeouts_total: Callers that gave up after ``DB_POOL_TIMEOUT`` or were shed.
        connects_total: New server connections opened.
        invalidations_total: Connections thrown away as broken.
        leaks_total: Checkouts held past ``DB_LEAK_THRESHOLD_S`` (leak detection).
        retries_total: Units of work run again after a serialization failure or deadlock.
        wait_seconds_total: Time spent waiting, summed over callers.
        wait_seconds_max: Longest single wait.
        writers_waiting: SQLite: writing units of work queued for the process's write
            gate now, holding no connection, whichever pool they are for (reported on
            the async pool; 0 on PostgreSQL and for other pools).
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
    retries_total: int
    wait_seconds_total: float
    wait_seconds_max: float
    writers_waiting: int = 0

    @property
    def capacity(self) -> int:
        """The most connections the pool may have open at once."""
        return self.size + self.max_overflow

    @property
    def saturated(self) -> bool:
        """True when every connection is in use, so a new caller would wait."""
        return self.checked_out >= self.capacity


def _none_waiting() -> int:
    return 0


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
        self.retries_total = 0  # incremented by transaction retry (record_retry)
        self.in_use = 0  # checkouts not yet checked in, counted from the events
        self.wait_seconds_total = 0.0
        self.wait_seconds_max = 0.0
        # SQLite's write gate reports its queue here (set by the Database that owns it).
        self.count_writers_waiting: Callable[[], int] = _none_waiting
        self._pool: Pool | None = None
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

    def record_retry(self, code: str) -> None:
        """Count one unit of work run again after the transient failure *code*."""
        self.retries_total += 1

    def attach(self, pool: Pool) -> None:
        """Listen to *pool*'s events. Called once per pool, by the Database that owns it.

        A :class:`~.queue_pool.MonitoredPool` also reports its waiters here; any other
        pool (the health probe's ``NullPool``) reports what its events show.
        """
        self._pool = pool
        use_monitor = getattr(pool, "use_monitor", None)
        if use_monitor is not None:
            use_monitor(self)
        event.listen(pool, "connect", self._on_connect)
        event.listen(pool, "checkout", self._on_checkout)
        event.listen(pool, "checkin", self._on_checkin)
        event.listen(pool, "invalidate", self._on_invalidate)

    def snapshot(self) -> PoolSnapshot:
        """Return the pool's state now. Cheap: reads counters, takes no lock."""
        pool = self._pool
        if isinstance(pool, QueuePool):
            size, max_overflow = pool.size(), max_overflow_of(pool)
            checked_out, overflow = pool.checkedout(), max(pool.overflow(), 0)
            idle = pool.checkedin()
        else:  # not started, or a pool that keeps nothing (NullPool): what events saw
            size, max_overflow, overflow, idle = 0, 0, 0, 0
            checked_out = self.in_use
        return PoolSnapshot(
            name=self.name,
            size=size,
            max_overflow=max_overflow,
            checked_out=checked_out,
            overflow=overflow,
            idle=idle,
            waiting=self.waiting,
            checkouts_total=self.checkouts_total,
            timeouts_total=self.timeouts_total,
            connects_total=self.connects_total,
            invalidations_total=self.invalidations_total,
            leaks_total=self.leaks_total,
            retries_total=self.retries_total,
            wait_seconds_total=self.wait_seconds_total,
            wait_seconds_max=self.wait_seconds_max,
            writers_waiting=self.count_writers_waiting(),
        )

    # -- pool event listeners -----------------------------------------------------------

    def _on_connect(self, dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        self.connects_total += 1

    def _on_checkout(self, dbapi_connection: Any, record: ConnectionPoolEntry, proxy: Any) -> None:
        self.checkouts_total += 1
        self.in_use += 1
        record.info[_CHECKED_OUT_AT] = time.perf_counter()
        for observer in self._checkout_observers:
            observer(record)

    def _on_checkin(self, dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        started = record.info.pop(_CHECKED_OUT_AT, None)
        if started is not None:
            self.in_use -= 1
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
