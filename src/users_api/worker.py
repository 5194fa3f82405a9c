"""Item workers: ITEM_WORKERS tasks per process that take queued items and process them.

They run in the app's lifespan. Each loops: claim one item (:func:`claim_next`),
process it, write the outcome; with nothing to claim it waits for a wake-up (the 202 of
``POST /items/{id}/process`` in this process) or ITEM_SWEEP_S, whichever comes first,
and looks again: the sweep is what finds items queued while the database was down,
leases that ran out, and work that came in through another instance.

Failures of the database (pool timeout, connection lost, server down, serialization
failure) are retried with a capped exponential backoff: a claim until it works, a
finish or fail as long as the lease holds (the lease then runs out and the item is
claimed again, by ITEM_MAX_ATTEMPTS claims at most). An error of the processing itself
is no reason to retry: the item is ``failed`` at once, its reason in ``error``.

Shutdown (:meth:`ItemWorkers.running` exits): no new claims; running items get
ITEM_SHUTDOWN_GRACE_S to finish; those still running are cancelled and released
(lease cleared, the claim refunded), so the next instance to look takes them at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Annotated, TypeVar

from fastapi import Depends, Request

from fastapi_dbpool import Database
from fastapi_dbpool.errors import classify

from . import item_queue
from .item_metrics import ItemMetrics
from .item_queue import GaveUp, Lease
from .processing import analyse
from .settings import ItemSettings

__all__ = ["ItemWorkers", "WorkersDep", "is_transient"]

logger = logging.getLogger("users_api.worker")

T = TypeVar("T")

# Sweeps a busy pool may put off in a row: the next one then waits its turn for a
# connection, so that work nobody announced is found within this many ITEM_SWEEP_S.
SWEEPS_SKIPPED_MAX = 5

# Backoff between retries: 50 ms doubling to 1 s, with jitter so that the workers of
# many instances do not come back at the same instant.
BACKOFF_FIRST_S = 0.05
BACKOFF_MAX_S = 1.0


def is_transient(error: BaseException) -> bool:
    """True when *error* says the database cannot serve now but may soon.

    The library's taxonomy decides (:func:`fastapi_dbpool.errors.classify`): every
    failure it answers 503 (pool timeout, connection lost, server down or starting,
    serialization failure, deadlock, lock not available, statement timeout) is worth
    a retry; a conflict, an invalid value or a bug is not. A socket error that reached
    us untranslated (``OSError``, which includes ``TimeoutError``) counts as a lost
    connection.
    """
    if isinstance(error, OSError):
        return True
    failure = classify(error)
    return failure is not None and failure.status == 503


def has_free_connection(database: Database) -> bool:
    """True when the pool could hand out a connection now without making anyone wait."""
    pool = database.pool_snapshot()
    return pool.waiting == 0 and pool.checked_out < pool.size + pool.max_overflow


class _Backoff:
    def __init__(self) -> None:
        self.failures = 0

    def next(self) -> float:
        delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2**self.failures)
        self.failures += 1
        return float(delay * random.uniform(0.5, 1.0))  # jitter, not a secret


class ItemWorkers:
    """The item workers of one process.

    Args:
        database: The app's database; the workers use it only inside the lifespan.
        settings: ITEM_* settings.
        metrics: Where claims, retries and durations are counted.
    """

    def __init__(self, database: Database, settings: ItemSettings, metrics: ItemMetrics) -> None:
        self.database = database
        self.settings = settings
        self.metrics = metrics
        self._wake = asyncio.Event()
        self._stopping = False
        self._running: dict[int, Lease] = {}

    def wake(self) -> None:
        """Have idle workers look for work now (an item was just queued)."""
        self._wake.set()

    @property
    def running(self) -> dict[int, Lease]:
        """The leases being processed now, by worker number."""
        return dict(self._running)

    @asynccontextmanager
    async def run(self) -> AsyncIterator[None]:
        """Run the workers for the duration of the block; stop them as described above."""
        self._stopping = False
        tasks = [
            asyncio.create_task(self._work(n), name=f"item-worker-{n}")
            for n in range(self.settings.workers)
        ]
        try:
            yield
        finally:
            await self._stop(tasks)

    async def _stop(self, tasks: list[asyncio.Task[None]]) -> None:
        self._stopping = True
        self._wake.set()
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=self.settings.shutdown_grace_s)
        if late:
            logger.info(
                "releasing %d item(s) still running after ITEM_SHUTDOWN_GRACE_S=%g",
                len(self._running),
                self.settings.shutdown_grace_s,
            )
        for task in late:
            task.cancel()
        # Each cancelled worker releases its lease before it ends (see _process).
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _work(self, number: int) -> None:
        backoff = _Backoff()
        while not self._stopping:
            # Cleared before the claim, so that a wake-up during it is not lost.
            self._wake.clear()
            try:
                claimed = await item_queue.claim_next(
                    self.database,
                    lease_s=self.settings.lease_s,
                    max_attempts=self.settings.max_attempts,
                )
            except Exception as error:
                _log_failure("claim", error, first=backoff.failures == 0)
                self.metrics.retries.labels("claim").inc()
                # A bug (a missing table, say) is not cured by hammering: wait a sweep.
                await self._idle(backoff.next() if is_transient(error) else self.settings.sweep_s)
                continue
            if backoff.failures:
                logger.info("item claims work again after %d failure(s)", backoff.failures)
            backoff = _Backoff()
            if claimed is None:
                await self._idle_until_work()
            elif isinstance(claimed, GaveUp):
                self.metrics.failures.labels("attempts").inc()
                logger.warning("item %d failed: %s", claimed.item_id, claimed.reason)
            else:
                self._running[number] = claimed
                try:
                    await self._process(claimed)
                finally:
                    del self._running[number]

    async def _idle_until_work(self) -> None:
        """Wait for a wake-up, or for a sweep at a moment the pool has a free connection.

        A sweep is background work that nobody waits for: while requests queue for
        the pool, it waits another ITEM_SWEEP_S rather than take a connection from
        them, but never more than SWEEPS_SKIPPED_MAX times in a row. Under sustained
        pressure the pool may never look free, and expired leases and items queued
        through another instance would then wait forever; the forced sweep queues for
        a connection like any request does. A wake-up (a 202 just queued an item)
        claims at once.
        """
        # No clear() here: a wake-up that came during the claim must not be lost.
        skipped = 0
        while not self._stopping:
            await self._idle(self.settings.sweep_s)
            if self._wake.is_set() or has_free_connection(self.database):
                return
            skipped += 1
            if skipped >= SWEEPS_SKIPPED_MAX:
                logger.debug("item sweep: the pool stayed busy; sweeping anyway")
                return

    async def _idle(self, seconds: float) -> None:
        """Wait for a wake-up, the stop, or *seconds*."""
        if self._stopping:
            return
        with suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def _process(self, lease: Lease) -> None:
        self.metrics.claims.inc()
        if lease.took_over:
            self.metrics.lease_expiries.inc()
            logger.info("item %d: took over an expired lease", lease.item_id)
        try:
            try:
                if self.settings.processing_delay_ms:
                    await asyncio.sleep(self.settings.processing_delay_ms / 1000)
                result = analyse(lease.description)
            except Exception as error:
                logger.exception("processing item %d failed", lease.item_id)
                reason = f"processing raised {type(error).__name__}"
                if await self._settle("fail", lease, item_queue.fail, self.database, lease, reason):
                    self.metrics.failures.labels("error").inc()
                return
            waited = await self._settle(
                "finish", lease, item_queue.finish, self.database, lease, result
            )
            if waited is not None and waited >= 0:
                self.metrics.queued_to_done.observe(waited)
        except asyncio.CancelledError:
            await self._release_on_shutdown(lease)
            raise

    async def _settle(
        self,
        step: str,
        lease: Lease,
        write: Callable[..., Awaitable[T]],
        *args: object,
    ) -> T | None:
        """Run *write* until it works, retrying transient failures while the lease holds."""
        backoff = _Backoff()
        while True:
            try:
                return await write(*args)
            except Exception as error:
                if not is_transient(error):
                    logger.exception("item %d: %s failed", lease.item_id, step)
                    return None  # the lease runs out; the item is claimed again
                _log_failure(step, error, first=backoff.failures == 0)
            pause = backoff.next()
            if time.monotonic() + pause >= lease.deadline:
                logger.warning(
                    "item %d: lease ran out while retrying %s; it will be claimed again",
                    lease.item_id,
                    step,
                )
                return None
            self.metrics.retries.labels(step).inc()
            await asyncio.sleep(pause)

    async def _release_on_shutdown(self, lease: Lease) -> None:
        # Bounded: the database may be what keeps the item from finishing. If the
        # release fails, the lease runs out and the item is claimed again anyway.
        try:
            await asyncio.wait_for(
                item_queue.release(self.database, lease, refund=True),
                self.database.settings.pool_timeout + 1,
            )
        except Exception as error:
            logger.warning("item %d: not released (%s)", lease.item_id, type(error).__name__)


def _log_failure(step: str, error: Exception, *, first: bool) -> None:
    """Log a failed step: a warning for the first of a run of failures, then debug only.

    An outage fails every worker's step every second; one line says it all.
    """
    if not is_transient(error):
        logger.error("item %s failed: %r", step, error)
    else:
        logger.log(
            logging.WARNING if first else logging.DEBUG,
            "item %s failed, will retry: %s",
            step,
            type(error).__name__,
        )


def _workers(request: Request) -> ItemWorkers:
    workers: ItemWorkers = request.app.state.item_workers
    return workers


WorkersDep = Annotated[ItemWorkers, Depends(_workers)]
"""The app's :class:`ItemWorkers`, for an endpoint that queues items."""
