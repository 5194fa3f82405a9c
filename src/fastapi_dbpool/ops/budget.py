"""What the database server allows, and whether the app's pools fit in it.

PostgreSQL refuses a connection once ``max_connections`` minus its reserved slots are
open ("sorry, too many clients already"). Every worker process of the app opens a pool
of its own, plus a connection for the health probe, so the app needs up to::

    workers x (DB_POOL_SIZE + DB_MAX_OVERFLOW + 1)

and it shares the server with everything else already connected. This module gathers
the facts (:func:`inspect_server`), does that sum (:class:`ConnectionBudget`) and
recommends a pool size (:func:`recommend_pool_size`). ``dbpool doctor`` and the check the
app runs at start-up both use it.

The facts are read through a connection opened like the app's own (same driver, same
startup parameters), under its own ``application_name``, so that a setting the server or
a pooler rejects shows up here first.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import SettingsError
from ..settings import DatabaseSettings
from .facts import PoolerFacts, ServerFacts, inspect_server, local_cpu_count

__all__ = [
    "PROBE_CONNECTIONS_PER_WORKER",
    "ConnectionBudget",
    "PoolerFacts",
    "Recommendation",
    "ServerFacts",
    "connection_budget",
    "inspect_server",
    "local_cpu_count",
    "recommend_pool_size",
    "workers_from_env",
]

# The readiness probe's engine opens one connection at a time per worker, apart from the pool.
PROBE_CONNECTIONS_PER_WORKER = 1


@dataclass(frozen=True, slots=True)
class ConnectionBudget:
    """The app's connections at full load against the server's free slots."""

    workers: int
    pool_size: int
    max_overflow: int
    max_connections: int
    reserved_connections: int
    in_use_by_others: int
    probe_connections_per_worker: int = PROBE_CONNECTIONS_PER_WORKER
    #: Pools of that size per worker: 1, or 2 when ``def`` endpoints use the sync pool.
    pools: int = 1

    @property
    def per_worker(self) -> int:
        """Connections one worker may open: each pool with its overflow, and the probe's."""
        return self.pools * (self.pool_size + self.max_overflow) + self.probe_connections_per_worker

    @property
    def needed(self) -> int:
        """Connections all workers may open at once."""
        return self.workers * self.per_worker

    @property
    def server_limit(self) -> int:
        """Connections the server accepts from ordinary roles."""
        return self.max_connections - self.reserved_connections

    @property
    def available(self) -> int:
        """Slots left for the app once the other clients are counted."""
        return self.server_limit - self.in_use_by_others

    @property
    def fits(self) -> bool:
        """True when every worker can open its whole pool."""
        return self.needed <= self.available

    def describe(self) -> str:
        """The sum in words, e.g. for a log line or a table cell."""
        pool = f"{self.pool_size} pool + {self.max_overflow} overflow"
        if self.pools > 1:  # the sync pool of def endpoints, beside the async one
            pool = f"{self.pools} x ({pool})"
        return (
            f"{self.workers} worker(s) x ({pool} + {self.probe_connections_per_worker} probe)"
            f" = {self.needed} connections;"
            f" the server allows {self.server_limit} (max_connections {self.max_connections}"
            f" - {self.reserved_connections} reserved), {self.in_use_by_others} in use by"
            f" other clients: {self.available} available"
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form, derived values included."""
        return asdict(self) | {
            "per_worker": self.per_worker,
            "needed": self.needed,
            "server_limit": self.server_limit,
            "available": self.available,
            "fits": self.fits,
        }


@dataclass(frozen=True, slots=True)
class Recommendation:
    """A pool size per worker and the reasoning behind it, one sentence a step."""

    pool_size: int
    max_overflow: int
    database_connections: int
    reasons: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def workers_from_env() -> int:
    """The number of worker processes: ``WEB_CONCURRENCY`` (uvicorn's and gunicorn's), else 1.

    Raises:
        SettingsError: WEB_CONCURRENCY is not a positive integer.
    """
    raw = os.environ.get("WEB_CONCURRENCY", "").strip()
    if not raw:
        return 1
    try:
        workers = int(raw)
    except ValueError:
        workers = 0
    if workers < 1:
        raise SettingsError(f"WEB_CONCURRENCY: must be a positive integer, got {raw!r}")
    return workers


def connection_budget(
    settings: DatabaseSettings, facts: ServerFacts, workers: int, *, pools: int = 1
) -> ConnectionBudget | None:
    """The budget of *settings* on the server of *facts*, or None when it does not apply.

    *pools* is 2 for an app whose ``def`` endpoints use the sync pool beside the async one.

    None on SQLite, when the server's limits are unknown, and behind a pooler: there the
    app's connections are the pooler's clients, and ``max_connections`` bounds the
    pooler's own server connections instead.
    """
    if facts.max_connections is None or facts.pooler is not None:
        return None
    reserved = (facts.superuser_reserved_connections or 0) + (facts.reserved_connections or 0)
    return ConnectionBudget(
        workers=workers,
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        max_connections=facts.max_connections,
        reserved_connections=reserved,
        in_use_by_others=facts.connections_in_use_by_others or 0,
        pools=pools,
    )


def recommend_pool_size(
    *,
    workers: int,
    db_cores: int,
    db_cores_source: str,
    spindles: int,
    spindles_source: str,
    backend: str = "postgresql",
    budget: ConnectionBudget | None = None,
    behind_pooler: bool = False,
) -> Recommendation:
    """Recommend a pool size per worker from HikariCP's rule, then fit it to the budget.

    HikariCP's "About Pool Sizing": a database serves about ``cores x 2 + effective
    spindles`` queries at once; more connections only queue inside the server and add
    context switches. The app's share is split across its workers, and capped by the free
    slots of *budget* when there is one. A fixed pool (no overflow) is recommended: opening
    a connection under load is the slowest moment to do it.
    """
    total = db_cores * 2 + spindles
    reasons = [
        f"database host: {db_cores} core(s) ({db_cores_source}), {spindles} effective"
        f" spindle(s) ({spindles_source})",
        f"HikariCP's rule: connections ≈ cores x 2 + spindles = {db_cores} x 2 + {spindles}"
        f" = {total} busy connections for the whole database",
    ]
    if backend == "sqlite":
        reasons.append(
            "SQLite runs one write at a time (in-process gate + busy_timeout); the other"
            " connections serve reads in parallel"
        )
    per_worker = max(1, total // workers)
    if workers > 1:
        reasons.append(f"split across {workers} workers: {total} // {workers} = {per_worker}")
        if total < workers:
            reasons.append(
                "more workers than the database can keep busy: each keeps 1 connection;"
                " fewer workers, or PgBouncer in front, would queue less"
            )
    if behind_pooler:
        reasons.append(
            "behind a pooler: this also sizes PgBouncer's default_pool_size; the app's"
            " client connections are cheap and may exceed it up to max_client_conn"
        )
    if budget is not None:
        room = budget.available // workers - budget.probe_connections_per_worker
        if room < per_worker:
            if room >= 1:
                reasons.append(
                    f"capped by the server's free slots: {budget.available} available //"
                    f" {workers} worker(s) - {budget.probe_connections_per_worker} probe"
                    f" = {room} per worker"
                )
                per_worker = room
            else:
                reasons.append(
                    f"the server has {budget.available} free slot(s) for {workers} worker(s):"
                    " raise max_connections, run fewer workers or put PgBouncer in front"
                )
    return Recommendation(
        pool_size=per_worker, max_overflow=0, database_connections=total, reasons=tuple(reasons)
    )
