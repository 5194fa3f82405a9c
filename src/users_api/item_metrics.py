"""Prometheus metrics of item processing, served with the pool's at ``GET /metrics``.

- ``users_api_items{status}`` (gauge): items in each status, read from the database when
  /metrics is scraped.
- ``users_api_item_claims_total`` (counter): items claimed by a worker.
- ``users_api_item_lease_expiries_total`` (counter): claims that took over a lease that
  had run out (its worker died, hung or lost the database).
- ``users_api_item_retries_total{step}`` (counter): database steps (claim, finish, fail)
  retried after a transient failure.
- ``users_api_item_failures_total{reason}`` (counter): items marked ``failed``
  (``error``: processing raised; ``attempts``: ITEM_MAX_ATTEMPTS used up).
- ``users_api_item_queued_to_done_seconds`` (histogram): from the 202 (``queued``) to
  ``done``.

They join the library's registry (``install_metrics(app).registry``), so they share its
path, its token and, with ``PROMETHEUS_MULTIPROC_DIR``, its multiprocess files: the
counters and the histogram are then written to the files, while the status gauge, a
fact of the database rather than of a process, is read by whichever process answers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .models import ITEM_STATUSES

__all__ = ["ItemMetrics", "StatusRefresher"]

logger = logging.getLogger("users_api.worker")

# From a few milliseconds (a free worker) to minutes (an outage, a restart).
QUEUED_TO_DONE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class _StatusCollector(Collector):
    """Yield the last status counts read (none, when the last read failed)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] | None = None

    def describe(self) -> list[Metric]:
        return [self._family()]

    def collect(self) -> list[Metric]:
        family = self._family()
        if self.counts is not None:
            for status in ITEM_STATUSES:
                family.add_metric([status], self.counts.get(status, 0))
        return [family]

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily("users_api_items", "Items in each status.", labels=["status"])


class ItemMetrics:
    """The counters the workers feed and the status gauge read at scrape time.

    Args:
        registry: The library's registry, or None when metrics are off (the counters
            then count for nobody) or in multiprocess mode (they go to the files).
        multiprocess: True with ``PROMETHEUS_MULTIPROC_DIR``: the counters must not be
            registered, the registry collects them from the files.
    """

    def __init__(self, registry: CollectorRegistry | None, *, multiprocess: bool = False) -> None:
        own = None if multiprocess else registry
        self.claims = Counter("users_api_item_claims", "Items claimed by a worker.", registry=own)
        self.lease_expiries = Counter(
            "users_api_item_lease_expiries",
            "Claims that took over a lease that had run out.",
            registry=own,
        )
        self.retries = Counter(
            "users_api_item_retries",
            "Database steps retried after a transient failure.",
            ["step"],
            registry=own,
        )
        self.failures = Counter(
            "users_api_item_failures", "Items marked failed.", ["reason"], registry=own
        )
        self.queued_to_done = Histogram(
            "users_api_item_queued_to_done_seconds",
            "Time from queued (the 202) to done.",
            buckets=QUEUED_TO_DONE_BUCKETS,
            registry=own,
        )
        self.status = _StatusCollector()
        if registry is not None:
            registry.register(self.status)


class StatusRefresher:
    """Read the status counts for a scrape (``Metrics.before_scrape``).

    Prometheus collectors are synchronous and the scrape runs on the event loop, so
    the database cannot be read from inside one; this reads it, asynchronously, just
    before the scrape renders (after its token check). At most one read a second,
    however often it is asked; none while *can_read* says no (the pool has no free
    connection: metrics must not compete with requests), when the last counts are
    shown again; none longer than *timeout* seconds, after which the gauge is left
    out of that scrape.
    """

    def __init__(
        self,
        *,
        metrics: ItemMetrics,
        read: Callable[[], Awaitable[dict[str, int]]],
        can_read: Callable[[], bool] = lambda: True,
        timeout: float = 1.0,
        min_interval: float = 1.0,
    ) -> None:
        self.metrics = metrics
        self.read = read
        self.can_read = can_read
        self.timeout = timeout
        self.min_interval = min_interval
        self._last = -float("inf")
        self._lock = asyncio.Lock()

    async def __call__(self) -> None:
        """Refresh the counts, unless they were read within *min_interval* seconds."""
        await self._refresh()

    async def _refresh(self) -> None:
        async with self._lock:
            if time.monotonic() - self._last < self.min_interval or not self.can_read():
                return
            self._last = time.monotonic()
            try:
                self.metrics.status.counts = await asyncio.wait_for(self.read(), self.timeout)
            except Exception as error:  # the scrape goes on without the gauge
                self.metrics.status.counts = None
                logger.warning("could not count items by status: %s", type(error).__name__)
