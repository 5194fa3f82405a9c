"""Waiting for a pool's capacity: the one path every pool goes through.

A caller that finds every connection in use waits here, whichever pool it asks: the
asyncio pool (:class:`~.queue_pool.MonitoredPool`), the sync pool's request slots
(:mod:`fastapi_dbpool.request.sync`), and the thread path used by scripts on the sync
engine. :class:`Waiting` decides, in one place, when the queue is full
(``DB_MAX_WAITING``: shed at once), how long a caller may wait (``DB_POOL_TIMEOUT``),
what is counted, and what the error says, so all pools answer the same 503 with the
same message and the same stats.

Callers on the event loop queue on :class:`FifoPermits`, first come, first served.
Threads cannot await a permit; they wait in SQLAlchemy's own thread-safe queue, which
is fair enough for them, and :meth:`Waiting.queued` does the rest of the bookkeeping.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from ..errors import PoolTimeout, TooManyWaiting
from .monitor import PoolMonitor

__all__ = ["FifoPermits", "Waiting", "acquire_within"]


class Waiting:
    """Where callers wait for one pool's connections: FIFO, bounded in time and in number.

    Args:
        monitor: The pool's counters: ``waiting``, ``timeouts_total`` and the wait times.
        capacity: Connections the pool can hand out at once (size + overflow).
        timeout: Seconds a caller may wait (``DB_POOL_TIMEOUT``).
    """

    def __init__(self, monitor: PoolMonitor, *, capacity: int, timeout: float) -> None:
        self.monitor = monitor
        self.capacity = capacity
        self.timeout = timeout
        self.permits = FifoPermits(capacity)

    def try_take(self) -> bool:
        """Take a permit if one is free and nobody queues; never waits."""
        return self.permits.try_acquire()

    async def take(self) -> None:
        """Take a permit, queueing behind earlier callers for up to ``timeout`` seconds.

        Raises:
            TooManyWaiting: ``DB_MAX_WAITING`` callers already wait (shed at once).
            PoolTimeout: no permit came free within ``timeout`` seconds.
        """
        if self.permits.try_acquire():
            return
        with self.queued():
            # FifoPermits.acquire gives back a permit handed over as the caller was
            # cancelled and re-raises the cancellation: none is lost.
            try:
                await self.permits.acquire(self.timeout)
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
                f"database busy: {monitor.waiting} requests already wait for a connection of "
                f"pool {monitor.name!r} (DB_MAX_WAITING={monitor.max_waiting}); "
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
