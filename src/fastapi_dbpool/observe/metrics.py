"""Prometheus metrics of the pools and the requests, served at ``GET /metrics``.

One line installs them on an app that has a :class:`~fastapi_dbpool.Database`::

    database.install(app)
    install_metrics(app)  # /metrics; off with DB_METRICS=false; DB_METRICS_TOKEN protects it

Pool metrics carry the label ``pool`` (the Database's name). Gauges and counters are
read from :meth:`PoolMonitor.snapshot` when Prometheus scrapes, so they cost nothing
per checkout; the two histograms are fed by the monitor's wait and hold observers, one
``observe()`` per checkout. Request metrics come from
:class:`~fastapi_dbpool.observe.http_metrics.RequestMetricsMiddleware`.

With several worker processes, set ``PROMETHEUS_MULTIPROC_DIR`` to an empty directory
before the server starts: prometheus-client then writes each process's values to files
there and every scrape, whichever worker answers it, adds them up. Pool gauges and
counters, which live in each process's memory, are copied to those files once a
second (and just before a scrape, by the process answering it); pool gauges add up
over the live workers (``livesum``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import SecretStr
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from .._app import database_of
from ..errors import SettingsError
from ..pool.monitor import PoolMonitor
from .auth import token_check

if TYPE_CHECKING:
    from ..database import Database

__all__ = ["Metrics", "PoolCollector", "databases_of"]

logger = logging.getLogger("fastapi_dbpool")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# (metric name, PoolSnapshot attribute, help). Declared once for the scrape-time
# collector and for the multiprocess copy.
POOL_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("dbpool_size", "size", "Connections the pool keeps open (DB_POOL_SIZE)."),
    ("dbpool_max_overflow", "max_overflow", "Extra connections allowed (DB_MAX_OVERFLOW)."),
    ("dbpool_checked_out", "checked_out", "Connections in use now."),
    ("dbpool_overflow", "overflow", "Overflow connections open now, beyond dbpool_size."),
    ("dbpool_idle", "idle", "Open connections waiting in the pool now."),
    (
        "dbpool_waiting",
        "waiting",
        "Callers waiting for a free connection now (on SQLite also writers queued at the gate).",
    ),
    (
        "dbpool_write_gate_waiting",
        "writers_waiting",
        "SQLite: writing units of work queued for the write gate now (0 on PostgreSQL).",
    ),
)
POOL_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("dbpool_checkouts_total", "checkouts_total", "Connections handed out by the pool."),
    (
        "dbpool_timeouts_total",
        "timeouts_total",
        "Callers answered busy: no connection within DB_POOL_TIMEOUT, or DB_MAX_WAITING reached.",
    ),
    ("dbpool_connects_total", "connects_total", "New server connections opened."),
    ("dbpool_invalidations_total", "invalidations_total", "Connections discarded as broken."),
    ("dbpool_leaks_total", "leaks_total", "Checkouts held longer than the leak threshold."),
    (
        "dbpool_transaction_retries_total",
        "retries_total",
        "Units of work run again after a serialization failure or deadlock.",
    ),
)

# Checkout waits: tens of microseconds when a connection is free, up to DB_POOL_TIMEOUT.
WAIT_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# Hold times: a millisecond for a point query, seconds for a slow transaction or a leak.
HOLD_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# Request latency: Prometheus's default buckets.
REQUEST_BUCKETS = Histogram.DEFAULT_BUCKETS


class PoolCollector(Collector):
    """Report each pool's gauges and counters from its monitor at scrape time."""

    def __init__(self, monitors: Sequence[PoolMonitor]) -> None:
        self.monitors = list(monitors)

    def describe(self) -> list[Metric]:
        """The metric families this collector yields, without samples."""
        return list(self._families())

    def collect(self) -> list[Metric]:
        """One sample per pool of each gauge and counter, read now."""
        families = self._families()
        for monitor in self.monitors:
            snapshot = monitor.snapshot()
            for family, (_, attribute, _) in zip(
                families, POOL_GAUGES + POOL_COUNTERS, strict=True
            ):
                family.add_metric([monitor.name], getattr(snapshot, attribute))
        return list(families)

    @staticmethod
    def _families() -> list[GaugeMetricFamily | CounterMetricFamily]:
        gauges = [GaugeMetricFamily(name, text, labels=["pool"]) for name, _, text in POOL_GAUGES]
        counters = [
            CounterMetricFamily(name, text, labels=["pool"]) for name, _, text in POOL_COUNTERS
        ]
        return [*gauges, *counters]


class _SharedPoolMetrics:
    """Copy the pools' gauges and counters into prometheus-client's multiprocess files."""

    def __init__(self, monitors: Sequence[PoolMonitor]) -> None:
        self.monitors = list(monitors)
        self.gauges = {
            attribute: Gauge(name, text, ["pool"], registry=None, multiprocess_mode="livesum")
            for name, attribute, text in POOL_GAUGES
        }
        self.counters = {
            attribute: Counter(name, text, ["pool"], registry=None)
            for name, attribute, text in POOL_COUNTERS
        }
        self._published: dict[tuple[str, str], int] = {}
        # The periodic task (event loop) and a scrape (thread pool) both publish; two
        # publishes computing the same delta would count it twice.
        self._lock = threading.Lock()

    def publish(self) -> None:
        with self._lock:
            self._publish()

    def _publish(self) -> None:
        for monitor in self.monitors:
            snapshot = monitor.snapshot()
            for attribute, gauge in self.gauges.items():
                gauge.labels(monitor.name).set(getattr(snapshot, attribute))
            for attribute, counter in self.counters.items():
                value: int = getattr(snapshot, attribute)
                key = (monitor.name, attribute)
                delta = value - self._published.get(key, 0)
                if delta > 0:
                    counter.labels(monitor.name).inc(delta)
                    self._published[key] = value


class Metrics:
    """The Prometheus metrics of some pools and of the requests of one app.

    Multiprocess mode is on when ``PROMETHEUS_MULTIPROC_DIR`` is set. It must be set
    before the process starts: prometheus-client reads it when it is imported.

    Args:
        databases: The pools to report, each labelled with its ``name``.
        publish_interval: In multiprocess mode, seconds between copies of the pool
            gauges and counters to the shared files.

    Raises:
        SettingsError: ``PROMETHEUS_MULTIPROC_DIR`` names no directory.
    """

    def __init__(self, databases: Sequence[Database], *, publish_interval: float = 1.0) -> None:
        self.databases = list(databases)
        # Every pool of every database: async, sync, probe and replica pools.
        self.monitors = [monitor for database in databases for monitor in database.monitors()]
        self.multiprocess_dir = os.environ.get(MULTIPROC_ENV) or None
        self.publish_interval = publish_interval
        self.registry = CollectorRegistry()
        if self.multiprocess_dir is not None and not os.path.isdir(self.multiprocess_dir):
            raise SettingsError(
                f"{MULTIPROC_ENV}={self.multiprocess_dir!r} is not a directory: create it, "
                "empty, before the server starts, or unset it for a single process"
            )
        # In multiprocess mode the values live in files, collected at scrape time by a
        # MultiProcessCollector; the metric objects must not be registered as well.
        own = None if self.multiprocess_dir else self.registry
        self.checkout_wait_seconds = Histogram(
            "dbpool_checkout_wait_seconds",
            "Time a caller waited for a pooled connection.",
            ["pool"],
            buckets=WAIT_BUCKETS,
            registry=own,
        )
        self.hold_seconds = Histogram(
            "dbpool_hold_seconds",
            "Time a connection was held, from checkout to checkin.",
            ["pool"],
            buckets=HOLD_BUCKETS,
            registry=own,
        )
        self.requests_total = Counter(
            "http_requests_total",
            "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=own,
        )
        self.request_duration_seconds = Histogram(
            "http_request_duration_seconds",
            "Time to answer an HTTP request, by method, route template and status.",
            ["method", "route", "status"],
            buckets=REQUEST_BUCKETS,
            registry=own,
        )
        # Label children by label values: .labels() takes a lock and builds a key on
        # every call, a dict lookup does not.
        self._before_scrape: list[Callable[[], Awaitable[None]]] = []
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._shared: _SharedPoolMetrics | None = None
        if self.multiprocess_dir:
            multiprocess.MultiProcessCollector(  # type: ignore[no-untyped-call]
                self.registry, path=self.multiprocess_dir
            )
            self._shared = _SharedPoolMetrics(self.monitors)
        else:
            self.registry.register(PoolCollector(self.monitors))
        for monitor in self.monitors:
            monitor.on_wait(self.checkout_wait_seconds.labels(monitor.name).observe)
            monitor.on_hold(self.hold_seconds.labels(monitor.name).observe)

    def record_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request and observe its duration."""
        key = (method, route, status)
        children = self._request_children.get(key)
        if children is None:
            labels = (method, route, str(status))
            children = (
                self.requests_total.labels(*labels),
                self.request_duration_seconds.labels(*labels),
            )
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def before_scrape(self, refresh: Callable[[], Awaitable[None]]) -> None:
        """Await *refresh* before each ``GET /metrics`` renders, in the scrape's request.

        For gauges of the app's own that are read from the database when Prometheus
        asks, rather than kept up to date on every change. It costs nothing per request:
        only the scrape runs it. *refresh* should bound its own time and keep its last
        values when it cannot read; an error it raises is logged and the scrape goes on.
        """
        self._before_scrape.append(refresh)

    async def _refresh(self) -> None:
        for refresh in self._before_scrape:
            try:
                await refresh()
            except Exception:
                logger.warning("a before-scrape refresh failed", exc_info=True)

    def publish(self) -> None:
        """In multiprocess mode, copy this process's pool state to the shared files."""
        if self._shared is not None:
            self._shared.publish()

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """Return the exposition (text format, or OpenMetrics if *accept* asks for it)."""
        self.publish()
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Keep the multiprocess copy fresh while the app runs; a no-op otherwise."""
        if self._shared is None:
            yield
            return
        task = asyncio.create_task(self._publish_periodically())
        try:
            yield
        finally:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
            self.publish()
            # This process's live gauges must stop counting towards the sums.
            multiprocess.mark_process_dead(  # type: ignore[no-untyped-call]
                os.getpid(), self.multiprocess_dir
            )

    async def _publish_periodically(self) -> None:
        while True:
            self.publish()
            await asyncio.sleep(self.publish_interval)

    def router(self, path: str = "/metrics", *, token: SecretStr | None = None) -> APIRouter:
        """A router with ``GET <path>``; with *token*, it answers 401 without it."""
        # Tagged, like every route the library adds: an app whose
        # generate_unique_id_function reads route.tags[0] must keep working.
        router = APIRouter(tags=["metrics"])
        guard = token_check(token, challenge='Bearer realm="metrics"')

        @router.get(path, include_in_schema=False, dependencies=[Depends(guard)])
        async def metrics(request: Request) -> Response:
            await self._refresh()
            accept = request.headers.get("accept")
            if self.multiprocess_dir:
                # Reads one file per process and metric type: keep it off the loop.
                body, content_type = await run_in_threadpool(self.render, accept)
            else:
                body, content_type = self.render(accept)
            return Response(body, media_type=content_type)

        return router


def databases_of(app: Any, databases: Sequence[Database] | None) -> list[Database]:
    """*databases*, or the Database installed on *app*."""
    if databases:
        return list(databases)
    return [database_of(app)]
