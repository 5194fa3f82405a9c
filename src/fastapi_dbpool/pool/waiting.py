"""Waiting for a pool's capacity: the one path every pool goes through.

A caller that finds every connection in use waits here, whichever pool it asks: the
asyncio pool (:class:`~.queue_pool.MonitoredPool`), the sync pool's request slots
(:mod:`fastapi_dbpool.request.sync`), and the thread path used by scripts on the sync
engine. So does a writer queued for SQLite's write gate (:mod:`fastapi_dbpool.sqlite.gate`),
which is a pool of one turn shared by the process's pools. :class:`Waiting` decides, in
one place, when the queue is full (``DB_MAX_WAITING``: shed at once), how long a caller
may wait (``DB_POOL_TIMEOUT``), what is counted, and what the error says, so all pools
and the gate answer the same 503 with the same message and the same stats.

Callers on the event loop queue on :class:`FifoPermits`, first come, first served.
Threads cannot await a permit; they wait in SQLAlchemy's own thread-safe queue (or the
gate's lock), which is fair enough for them, and :meth:`Waiting.queued` does the rest of
the bookkeeping.

A writer on SQLite waits twice, for the gate and then for a connection, and both waits
together are bounded by one ``DB_POOL_TIMEOUT``: the gate hands its caller's
:class:`Deadline` on (:func:`carry_deadline`), and the caller's next wait for a permit
ends at it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar

from ..errors import PoolTimeout, TooManyWaiting
from .monitor import PoolMonitor

__all__ = ["Deadline", "FifoPermits", "Waiting", "carry_deadline"]


class Deadline:
    """When a caller's wait must end, in ``time.monotonic()`` seconds; spent once used.

    Args:
        at: The monotonic time by which the caller must have its permit.
    """

    __slots__ = ("at", "spent")

    def __init__(self, at: float) -> None:
        self.at = at
        self.spent = False

    def remaining(self) -> float:
        """Seconds left, 0 once past."""
        return max(self.at - time.monotonic(), 0.0)


# The deadline a caller carries from one wait into its next (see carry_deadline).
_CARRIED: ContextVar[Deadline | None] = ContextVar("fastapi_dbpool_wait_deadline", default=None)


def carry_deadline(deadline: Deadline) -> None:
    """Bound the next permit this context waits for by *deadline*, then forget it.

    Set in the caller's context (a task, and the SQLAlchemy greenlets and worker
    threads that run for it). The next :meth:`Waiting.try_take` or :meth:`Waiting.take`
    in that context spends it, whichever pool it is for; mark it ``spent`` to drop it
    earlier (the gate does when it is given back).
    """
    _CARRIED.set(deadline)


def _carried() -> Deadline | None:
    deadline = _CARRIED.get()
    if deadline is None or deadline.spent:
        return None
    deadline.spent = True
    return deadline


class Waiting:
    """Where callers wait for one pool's connections: FIFO, bounded in time and in number.

    Args:
        monitor: The pool's counters: ``waiting``, ``timeouts_total`` and the wait times.
        capacity: Connections the pool can hand out at once (size + overflow).
        timeout: Seconds a caller may wait (``DB_POOL_TIMEOUT``).
        permits: The permits to queue on; default: *capacity* of the pool's own. Queues
            of several pools may share permits (SQLite's write gate: one turn for the
            process, waited for by each pool's writers under that pool's counters).
        lock: What the permit stands for when it is not a connection, as the error
            names it (``"SQLite's write lock"``).
    """

    def __init__(
        self,
        monitor: PoolMonitor,
        *,
        capacity: int,
        timeout: float,
        permits: FifoPermits | None = None,
        lock: str | None = None,
    ) -> None:
        self.monitor = monitor
        self.capacity = capacity
        self.timeout = timeout
        self.permits = FifoPermits(capacity) if permits is None else permits
        self.lock = lock

    def try_take(self) -> bool:
        """Take a permit if one is free and nobody queues; never waits."""
        if self.permits.try_acquire():
            if _CARRIED.get() is not None:
                _carried()  # the caller's wait ended here: spend its deadline
            return True
        return False

    async def take(self, deadline: Deadline | None = None) -> None:
        """Take a permit, queueing behind earlier callers for up to ``timeout`` seconds.

        Args:
            deadline: When the wait must end at the latest. Default: the deadline the
                caller carries from an earlier wait (:func:`carry_deadline`), if any.

        Raises:
            TooManyWaiting: ``DB_MAX_WAITING`` callers already wait (shed at once).
            PoolTimeout: no permit came free within ``timeout`` seconds (or by the
                deadline); the message names the caller's ``DB_POOL_TIMEOUT``.
        """
        if deadline is None:
            deadline = _carried()
        if self.permits.try_acquire():
            return
        timeout = self.timeout if deadline is None else min(self.timeout, deadline.remaining())
        with self.queued():
            # FifoPermits.acquire gives back a permit handed over as the caller was
            # cancelled and re-raises the cancellation: none is lost.
            try:
                await self.permits.acquire(timeout)
            except TimeoutError:
                raise self.timed_out() from None

    def give_back(self) -> None:
        """Return a permit: to the oldest waiter, else to the free count."""
        self.permits.release()

    @contextmanager
    def queued(self) -> Iterator[None]:
        """Count the caller as waiting for the block, after refusing it if the queue is full.

        Raises:
            TooManyWaiting: ``DB_MAX_WAITING`` callers already wait.
        """
        monitor = self.monitor
        if monitor.max_waiting and monitor.waiting >= monitor.max_waiting:
            monitor.timeouts_total += 1
            raise TooManyWaiting(
                f"database busy: {monitor.waiting} requests already wait for pool "
                f"{monitor.name!r} (DB_MAX_WAITING={monitor.max_waiting}); "
                "raise DB_POOL_SIZE or DB_MAX_WAITING"
            )
        monitor.waiting += 1
        try:
            yield
        finally:
            monitor.waiting -= 1

    def timed_out(self) -> PoolTimeout:
        """Count a caller that gave up, and return the error that tells it what to change."""
        self.monitor.timeouts_total += 1
        if self.lock is not None:
            return PoolTimeout(
                f"database busy: {self.lock} did not come free within {self.timeout:.2f} s "
                f"(DB_POOL_TIMEOUT) for a writer of pool {self.monitor.name!r}; another "
                "transaction held it; keep write transactions short"
            )
        return PoolTimeout(
            f"database busy: no connection became free within {self.timeout:.2f} s "
            f"(DB_POOL_TIMEOUT); all {self.capacity} connections of pool "
            f"{self.monitor.name!r} are in use; raise DB_POOL_SIZE or DB_MAX_OVERFLOW, "
            "or hold connections for less time"
        )


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

    @property
    def free(self) -> int:
        """Permits nobody holds now."""
        return self._free

    @property
    def queued(self) -> int:
        """Callers waiting for a permit now."""
        return sum(1 for waiter in self._waiters if not waiter.done())

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
