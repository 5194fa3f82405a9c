"""The ``dbpool`` command: ``dbpool doctor`` and ``dbpool bench``.

``doctor`` reads the same settings as the app (``DATABASE_URL``, ``DB_*``,
``WEB_CONCURRENCY``) and says whether the pool fits the server; ``bench`` puts a short
load on a running app. Both print rich tables, or JSON with ``--json``, and exit 0 when
all is well, 1 on warnings (or error answers), 2 on errors. The URL's password is never
printed. The logic lives in :mod:`.doctor`, :mod:`.loadgen` and :mod:`.wrk`; this
module parses options and renders.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .._app import STATE_KEY
from ..database import Database
from ..errors import SettingsError
from ..ops.budget import ServerFacts, workers_from_env
from ..request.routes import PoolUse
from ..settings import DatabaseSettings
from .doctor import DoctorReport, diagnose, invalid_settings_report
from .loadgen import Target, TargetError, run_load
from .wrk import WrkError, bench_summary, fixed_request, run_wrk

__all__ = ["app", "main"]

T = TypeVar("T")

app = typer.Typer(
    name="dbpool",
    help="Check a fastapi-dbpool app's pool against its database, and load-test the app.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_LEVEL_STYLES = {"error": "bold red", "warning": "yellow", "info": "cyan"}
_STATUS_STYLES = {"ok": "bold green", "warnings": "bold yellow", "errors": "bold red"}


def main() -> None:
    """Entry point of the ``dbpool`` console script."""
    app()


@app.callback()
def _root() -> None:
    """Check a fastapi-dbpool app's pool against its database, and load-test the app."""


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run *coroutine* on uvloop when it is installed (as uvicorn would), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)


# -- doctor ---------------------------------------------------------------------------------


@app.command()
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="Worker processes of the app [default: WEB_CONCURRENCY, else 1]."),
    ] = None,
    db_cores: Annotated[
        int | None,
        typer.Option(
            "--db-cores", min=1, help="CPU cores of the database host [default: ask the server]."
        ),
    ] = None,
    spindles: Annotated[
        int | None,
        typer.Option(
            min=0, help="Effective spindles of the database host; 0 if the data fits in RAM."
        ),
    ] = None,
    sync_endpoints: Annotated[
        bool,
        typer.Option(
            "--sync-endpoints",
            help="The app has def endpoints on sync sessions: count its sync pool too"
            " (overrides what --app finds).",
        ),
    ] = False,
    app_path: Annotated[
        str | None,
        typer.Option(
            "--app",
            help="The app as module:attribute (like uvicorn's): imported to see which pools"
            " its routes use, and its Database's settings are checked.",
        ),
    ] = None,
) -> None:
    """Check the pool settings against the database server and recommend a pool size.

    Reads the app's settings from the environment (or the app's, with --app). Exit code
    0 when all is well, 1 on warnings, 2 on errors (invalid settings, database
    unreachable).
    """
    try:
        pool_use = None
        if app_path is not None:
            settings, pool_use = _app_pools(app_path)
        else:
            settings = DatabaseSettings.from_env()
        worker_count = workers if workers is not None else workers_from_env()
    except SettingsError as error:
        report = invalid_settings_report(error)
    else:
        report = _run(
            diagnose(
                settings,
                workers=worker_count,
                db_cores=db_cores,
                spindles=spindles,
                sync_endpoints=sync_endpoints,
                pool_use=pool_use,
            )
        )
    if as_json:
        sys.stdout.write(json.dumps(report.as_dict(), indent=2, default=str) + "\n")
    else:
        _render_doctor(Console(highlight=False), report)
    raise typer.Exit(report.exit_code)


def _app_pools(path: str) -> tuple[DatabaseSettings, PoolUse]:
    """Import the app at *path* (``module:attribute``): its Database's settings and pools.

    Raises:
        SettingsError: *path* does not name an app with an installed Database.
    """
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise SettingsError(f"--app: expected module:attribute, got {path!r}")
    here = os.getcwd()  # as uvicorn does: the app's package from the current directory
    sys.path.insert(0, here)
    importlib.invalidate_caches()
    try:
        target: Any = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise SettingsError(f"--app: cannot import {path!r}: {error}") from error
    finally:
        sys.path.remove(here)
    state = getattr(getattr(target, "state", None), STATE_KEY, None)
    if not isinstance(state, Database):
        raise SettingsError(f"--app: {path!r} has no Database installed (Database.install(app))")
    return state.settings, Database.pools_used_by(target)


def _render_doctor(console: Console, report: DoctorReport) -> None:
    facts, settings = report.facts, report.settings
    table = Table(title="dbpool doctor", show_header=False, title_justify="left")
    table.add_column("item", style="bold")
    table.add_column("value")
    if settings:
        table.add_row("database", escape(str(settings.get("DATABASE_URL"))))
    if facts is not None:
        for item, value in _fact_rows(facts):
            table.add_row(item, escape(value))
    if settings:
        table.add_section()
        table.add_row("workers", str(report.workers))
        for name in ("DB_POOL_SIZE", "DB_MAX_OVERFLOW", "DB_POOL_TIMEOUT", "DB_POOL_RECYCLE"):
            table.add_row(name, str(settings.get(name)))
        for name in ("DB_POOL_PRE_PING", "DB_STATEMENT_TIMEOUT_MS", "DB_CONNECT_TIMEOUT"):
            table.add_row(name, str(settings.get(name)))
        table.add_row("pools per worker", ", ".join(report.pools))
    if report.budget is not None:
        verdict = "[green]fits[/]" if report.budget.fits else "[bold red]does not fit[/]"
        table.add_row("connection budget", f"{verdict}: {escape(report.budget.describe())}")
    if report.replica_facts is not None:
        replica = report.replica_facts
        table.add_section()
        table.add_row("replica", escape(f"{replica.product} {replica.version}"))
        table.add_row("replica max_connections", str(replica.max_connections))
    if report.replica_budget is not None:
        budget = report.replica_budget
        verdict = "[green]fits[/]" if budget.fits else "[bold red]does not fit[/]"
        table.add_row("replica budget", f"{verdict}: {escape(budget.describe())}")
    if table.row_count:
        console.print(table)

    if report.findings:
        findings = Table(title="findings", title_justify="left")
        findings.add_column("level")
        findings.add_column("setting")
        findings.add_column("finding")
        for f in report.findings:
            style = _LEVEL_STYLES[f.level]
            findings.add_row(f"[{style}]{f.level}[/]", f.setting or "", escape(f.message))
        console.print(findings)

    if report.recommendation is not None:
        rec = report.recommendation
        console.print(
            f"[bold]recommended pool size:[/] DB_POOL_SIZE={rec.pool_size}"
            f" DB_MAX_OVERFLOW={rec.max_overflow} per worker"
        )
        for reason in rec.reasons:
            console.print(f"  - {escape(reason)}")
    style = _STATUS_STYLES[report.status]
    console.print(f"status: [{style}]{report.status}[/] (exit code {report.exit_code})")


def _fact_rows(facts: ServerFacts) -> list[tuple[str, str]]:
    rows = [("server", f"{facts.product} {facts.version}")]
    if facts.backend == "sqlite":
        rows.append(
            ("file", f"{facts.sqlite_path}" + ("" if facts.sqlite_exists else " (missing)"))
        )
        if facts.journal_mode is not None:
            rows += [
                ("journal_mode", str(facts.journal_mode)),
                ("busy_timeout", f"{facts.busy_timeout_ms} ms"),
                ("foreign_keys", "on" if facts.foreign_keys else "off"),
                ("synchronous", str(facts.synchronous)),
            ]
        return rows
    reserved = f"{facts.superuser_reserved_connections} (superuser_reserved_connections)"
    if facts.reserved_connections:
        reserved += f" + {facts.reserved_connections} (reserved_connections)"
    rows += [
        ("max_connections", str(facts.max_connections)),
        ("reserved", reserved),
        (
            "in use",
            f"{facts.connections_in_use} client connections: {facts.connections_of_app} by"
            f" fastapi_dbpool pools of this name, {facts.connections_in_use_by_others} by"
            " others, 1 by doctor",
        ),
        ("PgBouncer in front", _pooler_text(facts)),
        ("idle_session_timeout", _seconds(facts.idle_session_timeout_s)),
        (
            "idle_in_transaction_session_timeout",
            _seconds(facts.idle_in_transaction_session_timeout_s),
        ),
        ("statement_timeout (server)", _seconds((facts.statement_timeout_ms or 0) / 1000)),
        (
            "tcp_keepalives_idle",
            f"{facts.tcp_keepalives_idle_s} s" if facts.tcp_keepalives_idle_s else "OS default",
        ),
        ("database host cores", f"{facts.db_cores or 'unknown'} ({facts.db_cores_source or '-'})"),
    ]
    return rows


def _pooler_text(facts: ServerFacts) -> str:
    pooler = facts.pooler
    if pooler is None:
        return "no"
    details = [pooler.product + (f" {pooler.version}" if pooler.version else "")]
    if pooler.pool_mode:
        details.append(f"pool_mode={pooler.pool_mode}")
    if pooler.max_client_conn is not None:
        details.append(f"max_client_conn={pooler.max_client_conn}")
    return f"yes: {', '.join(details)} ({'; '.join(pooler.evidence)})"


def _seconds(value: float | None) -> str:
    if value is None:
        return "unknown"
    return f"{value:g} s" if value else "off"


# -- bench ----------------------------------------------------------------------------------


@app.command()
def bench(
    url: Annotated[str, typer.Argument(help="The running app, e.g. http://127.0.0.1:8000")],
    path: Annotated[
        str | None, typer.Option(help="Path (and query) to request [default: the URL's].")
    ] = None,
    method: Annotated[str, typer.Option(help="HTTP method.")] = "GET",
    body: Annotated[str | None, typer.Option(help="JSON request body.")] = None,
    header: Annotated[
        list[str] | None, typer.Option("--header", "-H", help="Extra header 'Name: value'.")
    ] = None,
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", min=1, max=10_000, help="Connections.")
    ] = 16,
    duration: Annotated[
        float, typer.Option("--duration", "-d", min=0.1, max=3600, help="Seconds of load.")
    ] = 5.0,
    use_wrk: Annotated[bool, typer.Option("--wrk", help="Use wrk (must be installed).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Put a short load on a running app and print latency percentiles and statuses.

    Exit code 0 when every answer was 2xx or 3xx, 1 when some were not (or failed), 2
    when nothing answered or the options are invalid.
    """
    err = Console(stderr=True, highlight=False)
    try:
        target = Target.from_url(
            url,
            path=path,
            method=method,
            body=_json_body(body),
            headers=tuple(_header(h) for h in header or ()),
        )
    except (TargetError, ValueError) as error:
        err.print(f"[bold red]error:[/] {escape(str(error))}")
        raise typer.Exit(2) from None

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[responses]} responses"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as progress:
        task = progress.add_task(f"{target.method} {target.url}", total=duration, responses=0)

        def report(elapsed: float, responses: int) -> None:
            progress.update(task, completed=min(elapsed, duration), responses=responses)

        try:
            summary = _run(_bench(target, concurrency, duration, use_wrk, report))
        except WrkError as error:
            err.print(f"[bold red]error:[/] {escape(str(error))}")
            raise typer.Exit(2) from None

    if as_json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    else:
        _render_bench(Console(highlight=False), summary)
    if not summary["responses"]:
        raise typer.Exit(2)
    raise typer.Exit(1 if summary["errors"] else 0)


async def _bench(
    target: Target,
    concurrency: int,
    duration: float,
    use_wrk: bool,
    report: Callable[[float, int], None],
) -> dict[str, Any]:
    if not use_wrk:
        result = await run_load(target, concurrency=concurrency, duration=duration, progress=report)
        return result.as_dict()

    async def tick() -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            await asyncio.sleep(0.1)
            report(loop.time() - started, 0)

    ticker = asyncio.create_task(tick())
    try:
        seen = await asyncio.to_thread(
            run_wrk,
            target.url,
            connections=concurrency,
            duration=duration,
            args=fixed_request(target.method, target.body.decode(), target.headers),
        )
        return bench_summary(target, seen)
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker


def _json_body(body: str | None) -> bytes:
    if body is None:
        return b""
    try:
        json.loads(body)
    except ValueError as error:
        raise ValueError(f"--body is not valid JSON: {error}") from None
    return body.encode()


def _header(raw: str) -> tuple[str, str]:
    name, sep, value = raw.partition(":")
    if not sep or not name.strip():
        raise ValueError(f"--header {raw!r} is not 'Name: value'")
    return name.strip(), value.strip()


def _render_bench(console: Console, summary: dict[str, Any]) -> None:
    latency = summary["latency_ms"]
    table = Table(
        title=(
            f"dbpool bench: {summary['method']} {summary['url']}, {summary['concurrency']}"
            f" connections, {summary['duration_s']:.1f} s ({summary['engine']})"
        ),
        title_justify="left",
    )
    for column in ("requests", "req/s", "p50", "p90", "p99", "max", "errors"):
        table.add_column(column, justify="right")
    table.add_row(
        str(summary["requests"]),
        f"{summary['requests_per_second']:.1f}",
        *(_ms(latency[k]) for k in ("p50", "p90", "p99", "max")),
        str(summary["errors"]),
    )
    console.print(table)

    outcomes = Table(title="responses by status", title_justify="left")
    outcomes.add_column("status")
    outcomes.add_column("count", justify="right")
    outcomes.add_column("share", justify="right")
    total = max(1, summary["requests"])
    for status, count in summary["statuses"].items():
        style = "green" if 200 <= int(status) < 400 else "bold red"
        outcomes.add_row(f"[{style}]{status}[/]", str(count), f"{100 * count / total:.1f}%")
    for failure, count in summary["failures"].items():
        outcomes.add_row(
            f"[bold red]{escape(failure)}[/]", str(count), f"{100 * count / total:.1f}%"
        )
    console.print(outcomes)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"
