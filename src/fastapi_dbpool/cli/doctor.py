"""``dbpool doctor``: the server's facts, the budget, conflicting settings, a pool size.

This module decides; :mod:`fastapi_dbpool.cli` only renders. Each finding has a level:
``error`` (the app cannot work as configured: exit code 2), ``warning`` (it works until
load or time makes it fail: exit code 1) or ``info`` (worth knowing: exit code 0), and
names the setting to change.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import AliasChoices, SecretStr

from ..database import Database
from ..errors import ConnectFailed, SettingsError
from ..ops.budget import (
    ConnectionBudget,
    Recommendation,
    ServerFacts,
    connection_budget,
    inspect_server,
    local_cpu_count,
    recommend_pool_size,
)
from ..ops.facts import is_local_host
from ..ops.pgbouncer import identify_pgbouncer
from ..request.routes import PoolUse
from ..settings import DatabaseSettings

__all__ = ["DoctorReport", "Finding", "diagnose", "invalid_settings_report"]

Level = Literal["error", "warning", "info"]
EXIT_CODES: dict[Level | None, int] = {None: 0, "info": 0, "warning": 1, "error": 2}


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing the doctor noticed; *setting* is the variable to change, if any."""

    level: Level
    code: str
    message: str
    setting: str | None = None


@dataclass(slots=True)
class DoctorReport:
    """Everything ``dbpool doctor`` prints, in the form ``--json`` prints it."""

    settings: dict[str, Any]
    workers: int | None
    facts: ServerFacts | None = None
    budget: ConnectionBudget | None = None
    recommendation: Recommendation | None = None
    findings: list[Finding] = field(default_factory=list)
    #: The pools each worker opens on the primary: ``async``, ``sync``.
    pools: list[str] = field(default_factory=lambda: ["async"])
    #: ``DATABASE_REPLICA_URL`` is set; its standby's facts and the replica pool's budget.
    replica: bool = False
    replica_facts: ServerFacts | None = None
    replica_budget: ConnectionBudget | None = None

    @property
    def exit_code(self) -> int:
        """0 all well, 1 warnings, 2 errors."""
        return max((EXIT_CODES[f.level] for f in self.findings), default=0)

    @property
    def status(self) -> str:
        """``ok``, ``warnings`` or ``errors``."""
        return ("ok", "warnings", "errors")[self.exit_code]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "status": self.status,
            "exit_code": self.exit_code,
            "settings": self.settings,
            "workers": self.workers,
            "server": self.facts.as_dict() if self.facts else None,
            "budget": self.budget.as_dict() if self.budget else None,
            "recommendation": self.recommendation.as_dict() if self.recommendation else None,
            "findings": [dataclasses.asdict(f) for f in self.findings],
            "pools": self.pools,
            "replica": (
                {
                    "server": self.replica_facts.as_dict() if self.replica_facts else None,
                    "budget": self.replica_budget.as_dict() if self.replica_budget else None,
                }
                if self.replica
                else None
            ),
        }


def invalid_settings_report(error: SettingsError) -> DoctorReport:
    """The report when the settings cannot even be read; the message names the variable."""
    message = str(error)
    named = re.search(r"\b(DATABASE_URL|DB_[A-Z_]+|WEB_CONCURRENCY)\b", message)
    finding = Finding("error", "invalid_settings", message, named.group(1) if named else None)
    return DoctorReport(settings={}, workers=None, findings=[finding])


async def diagnose(
    settings: DatabaseSettings,
    *,
    workers: int,
    db_cores: int | None = None,
    spindles: int | None = None,
    sync_endpoints: bool = False,
    pool_use: PoolUse | None = None,
) -> DoctorReport:
    """Inspect the database of *settings* and judge the pool settings against it.

    Args:
        settings: The app's settings (``DatabaseSettings.from_env()``).
        workers: The app's worker processes.
        sync_endpoints: The app has ``def`` endpoints on sync sessions, so each worker
            opens a sync pool beside the async one (overrides *pool_use*).
        pool_use: The pools the app's routes use (``--app``); default: the async pool.
        db_cores: Cores of the database host; read from the server when omitted.
        spindles: Effective spindles of the database host; 1 assumed when omitted.
    """
    report = DoctorReport(settings=_settings_summary(settings), workers=workers)
    use = pool_use if pool_use is not None else PoolUse(async_pool=True, sync_pool=False)
    if sync_endpoints:
        use = PoolUse(async_pool=use.async_pool, sync_pool=True)
    # A sync-only app's async pool never connects; an app with no database routes still
    # has the async pool its background work and scripts use.
    used = (("async", use.async_pool), ("sync", use.sync_pool))
    report.pools = [name for name, on in used if on] or ["async"]
    try:
        facts = await inspect_server(Database(settings), purpose="doctor")
    except ConnectFailed as error:
        report.findings.append(_unreachable(error, settings))
        facts = None
    if facts is not None and facts.pooler is not None:
        facts = dataclasses.replace(facts, pooler=await identify_pgbouncer(settings, facts.pooler))
    report.facts = facts
    pools = len(report.pools)
    report.budget = connection_budget(settings, facts, workers, pools=pools) if facts else None
    if settings.replica_url is not None:
        report.replica = True
        await _diagnose_replica(settings.for_replica(), report)
    report.recommendation = _recommend(settings, facts, report.budget, workers, db_cores, spindles)
    if facts is not None:
        checks = _SQLITE_CHECKS if settings.backend == "sqlite" else _POSTGRES_CHECKS
        for check in checks:
            report.findings.extend(check(settings, facts, report))
    return report


async def _diagnose_replica(replica: DatabaseSettings, report: DoctorReport) -> None:
    """Inspect the standby and check the replica pool against *its* max_connections.

    Each worker opens one pool there (read-only sessions and connections) and the
    readiness probe's connection. The replica is optional to the app (reads fall back
    to the primary), so what goes wrong here is a warning.
    """
    try:
        facts = await inspect_server(Database(replica, name="replica"), purpose="doctor")
    except ConnectFailed as error:
        report.findings.append(
            Finding(
                "warning",
                "replica_unreachable",
                f"replica: {error}; reads fall back to the primary while it is down",
                "DATABASE_REPLICA_URL",
            )
        )
        return
    report.replica_facts = facts
    workers = report.workers or 1
    budget = report.replica_budget = connection_budget(replica, facts, workers, pools=1)
    if budget is not None and not budget.fits:
        report.findings.append(
            Finding(
                "warning",
                "replica_budget_exceeded",
                f"the replica pools do not fit on the standby: {budget.describe()}; under"
                " load it answers 'too many clients already' and reads fall back to the"
                " primary",
                "DB_POOL_SIZE",
            )
        )


def _settings_summary(settings: DatabaseSettings) -> dict[str, Any]:
    """The settings by environment variable name, secrets blanked."""
    summary: dict[str, Any] = {"DATABASE_URL": settings.redacted_url}
    for name, info in type(settings).model_fields.items():
        if name == "url":
            continue
        alias = info.validation_alias
        env = alias.choices[0] if isinstance(alias, AliasChoices) else name
        value = getattr(settings, name)
        summary[str(env)] = "***" if isinstance(value, SecretStr) else value
    return summary


def _unreachable(error: ConnectFailed, settings: DatabaseSettings) -> Finding:
    message = str(error)
    if "unsupported startup parameter" in message and "statement_timeout" in message:
        return Finding(
            "error",
            "startup_parameter_rejected",
            f"{message}. A pooler (PgBouncer) refuses statement_timeout as a startup"
            " parameter: set DB_STATEMENT_TIMEOUT_MS=0 and put the timeout on the role"
            " (ALTER ROLE ... SET statement_timeout = ...); listing it in PgBouncer's"
            " ignore_startup_parameters would let the app connect without any timeout",
            "DB_STATEMENT_TIMEOUT_MS",
        )
    return Finding("error", "unreachable", message, "DATABASE_URL")


def _recommend(
    settings: DatabaseSettings,
    facts: ServerFacts | None,
    budget: ConnectionBudget | None,
    workers: int,
    db_cores: int | None,
    spindles: int | None,
) -> Recommendation:
    if db_cores is not None:
        cores, cores_source = db_cores, "given with --db-cores"
    elif facts is not None and facts.db_cores is not None:
        cores, cores_source = facts.db_cores, str(facts.db_cores_source)
    elif settings.backend == "sqlite" or is_local_host(settings.sqlalchemy_url):
        cores, cores_source = local_cpu_count(), "the database runs on this machine"
    else:
        cores = local_cpu_count()
        cores_source = "assumed: this machine's count, the server's is unknown; pass --db-cores"
    if spindles is not None:
        spindles_source = "given with --spindles"
    else:
        spindles = 1
        spindles_source = "assumed; 0 when the working set fits in RAM, pass --spindles"
    return recommend_pool_size(
        workers=workers,
        db_cores=cores,
        db_cores_source=cores_source,
        spindles=spindles,
        spindles_source=spindles_source,
        backend=settings.backend,
        budget=budget,
        behind_pooler=facts is not None and facts.pooler is not None,
    )


Check = Callable[[DatabaseSettings, ServerFacts, DoctorReport], Iterator[Finding]]


def _pre_ping(
    settings: DatabaseSettings, facts: ServerFacts, report: DoctorReport
) -> Iterator[Finding]:
    if not settings.pool_pre_ping:
        yield Finding(
            "warning",
            "pre_ping_off",
            "pre-ping is off: a connection the server, a pooler or a firewall closed while it"
            " sat in the pool is handed to a request, which fails",
            "DB_POOL_PRE_PING",
        )


def _idle_timeouts(
    settings: DatabaseSettings, facts: ServerFacts, report: DoctorReport
) -> Iterator[Finding]:
    limits = [("the server's idle_session_timeout", facts.idle_session_timeout_s)]
    if facts.pooler is not None:
        limits.append(("PgBouncer's client_idle_timeout", facts.pooler.client_idle_timeout_s))
    for who, seconds in limits:
        if not seconds:
            continue
        recycle = settings.pool_recycle
        if recycle != -1 and recycle < seconds:
            continue
        said = "never recycled" if recycle == -1 else f"recycled after {recycle} s"
        consequence = (
            "pre-ping replaces them, one reconnect each"
            if settings.pool_pre_ping
            else "with pre-ping off, requests get the dead connections and fail"
        )
        yield Finding(
            "warning" if settings.pool_pre_ping else "error",
            "recycle_after_idle_timeout",
            f"pooled connections are {said}, but {who} closes them after {seconds:g} s idle:"
            f" {consequence}; set DB_POOL_RECYCLE below {seconds:g}",
            "DB_POOL_RECYCLE",
        )


def _statement_timeout(
    settings: DatabaseSettings, facts: ServerFacts, report: DoctorReport
) -> Iterator[Finding]:
    if settings.statement_timeout_ms:
        return
    if facts.statement_timeout_ms:
        yield Finding(
            "info",
            "server_statement_timeout",
            f"the server's default statement_timeout of {facts.statement_timeout_ms} ms applies",
            "DB_STATEMENT_TIMEOUT_MS",
        )
        return
    yield Finding(
        "warning",
        "statement_timeout_off",
        "no statement timeout: a runaway query holds its pooled connection until it ends;"
        " set DB_STATEMENT_TIMEOUT_MS (e.g. a little under your request timeout)",
        "DB_STATEMENT_TIMEOUT_MS",
    )


def _budget(
    settings: DatabaseSettings, facts: ServerFacts, report: DoctorReport
) -> Iterator[Finding]:
    budget, recommended = report.budget, report.recommendation
    if budget is not None and not budget.fits:
        yield Finding(
            "warning",
            "budget_exceeded",
            f"the pools do not fit: {budget.describe()}; under load the server answers"
            " 'too many clients already'",
            "DB_POOL_SIZE",
        )
    if facts.pooler is not None:
        yield Finding(
            "info",
            "behind_pooler",
            f"{facts.pooler.product} is in front of the server: max_connections bounds its"
            " server pools, not the app's connections",
        )
    if recommended is not None and settings.pool_size + settings.max_overflow > (
        recommended.pool_size
    ):
        yield Finding(
            "info",
            "pool_larger_than_useful",
            f"up to {settings.pool_size + settings.max_overflow} connections per worker; the"
            f" database keeps about {recommended.pool_size} per worker busy, the rest wait"
            " inside it",
            "DB_POOL_SIZE",
        )


def _pgbouncer(
    settings: DatabaseSettings, facts: ServerFacts, report: DoctorReport
) -> Iterator[Finding]:
    pooler = facts.pooler
    if pooler is None or pooler.product != "PgBouncer":
        return
    if pooler.pool_mode is None:
        yield Finding(
            "info",
            "pgbouncer_pool_mode_unknown",
            "PgBouncer's pool_mode is unknown; in transaction mode asyncpg's prepared"
            " statements need PgBouncer 1.21+ with max_prepared_statements > 0",
        )
    elif pooler.pool_mode != "session" and not pooler.max_prepared_statements:
        yield Finding(
            "warning",
            "pgbouncer_prepared_statements",
            f"PgBouncer runs in {pooler.pool_mode} mode without prepared statement support"
            " (max_prepared_statements, PgBouncer 1.21+): asyncpg's prepared statements"
            " reach other clients' server connections and fail; use pool_mode=session"
            " for this database or upgrade PgBouncer",
            "DATABASE_URL",
        )


def _sqlite(
    settings: DatabaseSettings, facts: ServerFacts, report: DoctorReport
) -> Iterator[Finding]:
    if not facts.sqlite_exists:
        yield Finding(
            "warning",
            "sqlite_missing",
            f"{facts.sqlite_path} does not exist: the app would create it empty; create the"
            " tables first (e.g. alembic upgrade head)",
            "DATABASE_URL",
        )
        return
    if facts.journal_mode != "wal":
        yield Finding(
            "warning",
            "sqlite_not_wal",
            f"journal_mode is {facts.journal_mode}, not wal: readers and the writer block each"
            " other (WAL needs a local file system and a writable directory)",
            "DATABASE_URL",
        )
    if not facts.busy_timeout_ms:
        yield Finding(
            "warning",
            "sqlite_busy_timeout_off",
            "busy_timeout is 0: a write from another process fails at once with"
            " 'database is locked'",
            "DB_SQLITE_BUSY_TIMEOUT_MS",
        )
    if not facts.foreign_keys:
        yield Finding("warning", "sqlite_foreign_keys_off", "foreign keys are not enforced")
    if settings.max_overflow:
        yield Finding(
            "warning",
            "sqlite_overflow",
            f"DB_MAX_OVERFLOW={settings.max_overflow} on SQLite: writes run one at a time"
            " whatever the pool size, so overflow connections only add threads; use 0",
            "DB_MAX_OVERFLOW",
        )
    if report.workers and report.workers > 1:
        yield Finding(
            "warning",
            "sqlite_workers",
            f"{report.workers} worker processes on SQLite: writes of different processes"
            f" are serialised by busy_timeout ({facts.busy_timeout_ms} ms) only and fail with"
            " 'database is locked' beyond it; prefer one worker",
            "WEB_CONCURRENCY",
        )


_POSTGRES_CHECKS: tuple[Check, ...] = (
    _pre_ping,
    _idle_timeouts,
    _statement_timeout,
    _budget,
    _pgbouncer,
)
_SQLITE_CHECKS: tuple[Check, ...] = (_sqlite, _budget)
