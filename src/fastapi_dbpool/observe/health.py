"""Health checks: liveness without the database, readiness with a bounded probe.

The probe uses its own connection, never one from the request pool, and its own
timeout, so that a busy pool is reported as "pool exhausted" and not mistaken for a
database that is down. Reasons are short fixed phrases: never the driver's message,
which can contain host names or user names.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from fastapi import APIRouter
from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import JSONResponse

from .._app import database_of
from ..pool.cleanup import hand_off

if TYPE_CHECKING:
    from ..database import Database

__all__ = ["Check", "HealthReport", "check_readiness", "health_router"]

logger = logging.getLogger("fastapi_dbpool")

DEFAULT_PROBE_TIMEOUT = 1.0


@dataclass(frozen=True, slots=True)
class Check:
    """One check's outcome: ``ok`` is True or the ``reason`` says what failed."""

    name: str
    ok: bool
    reason: str | None = None
    #: False for a check whose failure the app works around (a replica: reads go to
    #: the primary); it makes the report "degraded", not "failing".
    required: bool = True


@dataclass(frozen=True, slots=True)
class HealthReport:
    """The outcome of every check; ``ok`` only if all passed."""

    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every required check passed."""
        return all(check.ok for check in self.checks if check.required)

    @property
    def status(self) -> str:
        """``"ok"``, ``"degraded"`` (an optional check failed) or ``"failing"``."""
        if not self.ok:
            return "failing"
        return "ok" if all(check.ok for check in self.checks) else "degraded"

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form: ``{"status": "ok"|"degraded"|"failing", "checks": {...}}``."""
        return {
            "status": self.status,
            "checks": {
                check.name: {
                    k: v
                    for k, v in asdict(check).items()
                    if k not in ("name", "required") and v is not None
                }
                | {"status": "ok" if check.ok else "failing"}
                for check in self.checks
            },
        }


async def probe_database(database: Database, timeout: float = DEFAULT_PROBE_TIMEOUT) -> Check:
    """Run ``SELECT 1`` on a dedicated connection; report failure after *timeout* seconds.

    The answer comes at *timeout* at the latest: a probe that got no answer is
    abandoned, and its connection closed in the background (closing a connection to
    a server that does not answer takes SQLAlchemy another 2 s).
    """
    if not database.started:
        return Check("database", False, "not started")
    started = time.perf_counter()
    probe = asyncio.ensure_future(_select_one(database))
    try:
        done, _ = await asyncio.wait({probe}, timeout=timeout)
    except asyncio.CancelledError:
        probe.cancel()
        hand_off(probe)
        raise
    if not done:
        probe.cancel()
        hand_off(probe)
        reason = f"no answer within {timeout:g} s"
        _log_failure(database, reason, "TimeoutError", started)
        return Check("database", False, reason)
    error = probe.exception()
    if error is not None:  # any failure means "not ready"; details go to the log only
        _log_failure(database, "unreachable", type(error).__name__, started)
        return Check("database", False, "unreachable")
    return Check("database", True)


async def _select_one(database: Database) -> None:
    async with database.probe_engine.connect() as conn:
        # Read-only: on SQLite a default transaction begins IMMEDIATE and would
        # queue the probe behind (and then ahead of) the app's writers.
        await conn.execution_options(**database._read_only_options())
        await conn.execute(text("SELECT 1"))


def _log_failure(database: Database, reason: str, error: str, started: float) -> None:
    # The error's class name only: its message can name hosts and users.
    logger.warning(
        "readiness probe failed: %s (%s)",
        reason,
        error,
        extra={
            "event": "probe_failed",
            "pool": database.name,
            "error": error,
            "elapsed_s": round(time.perf_counter() - started, 3),
        },
    )


def check_pool(database: Database, *, name: str = "pool", sync: bool = False) -> Check:
    """Fail when every connection is in use and callers are queued for one.

    With *sync*, check the sync pool of ``def`` endpoints instead of the async pool.
    """
    if not database.started:
        return Check(name, False, "not started")
    snap = (database.sync_monitor if sync else database.monitor).snapshot()
    if snap.saturated and snap.waiting > 0:
        return Check(name, False, f"exhausted: {snap.checked_out} in use, {snap.waiting} waiting")
    return Check(name, True)


async def check_readiness(
    database: Database, timeout: float = DEFAULT_PROBE_TIMEOUT
) -> HealthReport:
    """Check the database (bounded by *timeout*), its pools, and the replica if any.

    Every pool is listed: ``pool`` (async), ``sync_pool`` when ``def`` endpoints take
    sync sessions, and with a replica ``replica`` (its server) and ``replica_pool``.
    The replica is probed at the same time as the primary and is not required: while
    it is down, or its pool is exhausted, reads go to the primary and the report says
    "degraded".
    """
    probes = [probe_database(database, timeout)]
    if database.replica is not None:
        probes.append(probe_database(database.replica, timeout))
    results = await asyncio.gather(*probes)
    checks = [results[0], check_pool(database)]
    if database.pool_use.sync_pool:  # def endpoints take the sync pool
        checks.append(check_pool(database, name="sync_pool", sync=True))
    if database.replica is not None:
        replica = results[1]
        checks.append(Check("replica", replica.ok, replica.reason, required=False))
        pool = check_pool(database.replica, name="replica_pool")
        checks.append(dataclasses.replace(pool, required=False))
    return HealthReport(checks)


def health_router(*, probe_timeout: float = DEFAULT_PROBE_TIMEOUT) -> APIRouter:
    """Make the routes ``GET /health/live`` and ``GET /health/ready`` for the app's Database.

    ``/health/live`` checks nothing outside the process and always answers 200.
    ``/health/ready`` runs ``SELECT 1`` on a connection of its own (never one of the
    request pool), reads the pool's state and probes the replica if there is one; it
    answers 200 when every required check passed and 503 otherwise, with each check's
    outcome in the body. Include it with ``app.include_router(health_router())``
    after :meth:`Database.install`.

    Args:
        probe_timeout: Seconds the readiness probe waits for ``SELECT 1`` before it
            reports the database as down; default 1.0. The probe's connection is closed
            in the background, so ``/health/ready`` answers within about this time.

    Returns:
        An ``APIRouter`` with prefix ``/health`` and tag ``health``.

    Raises:
        ValueError: *probe_timeout* is not a positive number of seconds.
    """
    if not probe_timeout > 0 or probe_timeout == float("inf"):
        raise ValueError(
            f"probe_timeout must be a positive number of seconds, not {probe_timeout!r}"
        )
    router = APIRouter(prefix="/health", tags=["health"])

    @router.get("/live")
    async def live() -> dict[str, object]:
        # Liveness checks nothing outside the process: a database outage must not
        # get healthy workers restarted. Same shape as /ready, with no checks.
        return HealthReport().as_dict()

    @router.get("/ready", responses={503: {"description": "A check failed"}})
    async def ready(request: Request) -> JSONResponse:
        report = await check_readiness(database_of(request.app), probe_timeout)
        return JSONResponse(report.as_dict(), status_code=200 if report.ok else 503)

    return router
