"""The benchmark run: databases, apps, and the order in which they are measured.

Comparisons are interleaved: every app of a backend runs at once (idle ones cost
nothing), and each endpoint is measured app after app, in alternating order from one
pass to the next, so that noise from the machine spreads over all apps alike.
"""

from __future__ import annotations

import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from . import database
from .loadgen import ALL_ENDPOINTS, ENDPOINTS, SYNC_ENDPOINT, Sample, run_wrk
from .servers import APPS, AppServer
from .system import LOAD_CPU, describe_machine, ensure_wrk, pin_postgres

COMPARED = ("users_api", "raw", "orm", "orm_dbpool", "tutorial")


@dataclass(frozen=True)
class Config:
    """How long and how much to measure. ``quick`` checks that everything runs."""

    quick: bool = False
    warmup: float = 2.0
    duration: float = 8.0
    passes: int = 2
    users: int = 10_000
    items_per_user: int = 10
    connections: int = 64
    pool_size: int = 10
    concurrencies: tuple[int, ...] = (1, 16, 64, 256, 1024)
    pool_sizes: tuple[int, ...] = (2, 5, 10, 20, 40)
    backends: tuple[str, ...] = ("postgresql", "sqlite")
    metrics_pairs: int = 6
    metrics_duration: float = 4.0

    @classmethod
    def make(cls, *, quick: bool, backends: tuple[str, ...] | None = None) -> Config:
        chosen = backends or cls.backends
        if quick:
            return cls(
                quick=True, warmup=0.5, duration=1.0, passes=1, users=1000, backends=chosen,
                metrics_pairs=2, metrics_duration=1.0,
            )  # fmt: skip
        return cls(backends=chosen)

    @property
    def items(self) -> int:
        return self.users * self.items_per_user


@dataclass
class Run:
    """Everything measured, as flat records, plus what the report needs to know."""

    config: Config
    machine: dict[str, Any] = field(default_factory=describe_machine)
    records: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)


def metrics_toggles_supported() -> dict[str, bool]:
    """Which of the observability settings this build of the library reads."""
    from fastapi_dbpool import DatabaseSettings
    from fastapi_dbpool.observe.settings import ObservabilitySettings

    aliases: set[str] = set()
    for settings in (DatabaseSettings, ObservabilitySettings):
        for info in settings.model_fields.values():
            choices = getattr(info.validation_alias, "choices", None) or []
            aliases |= {str(choice).upper() for choice in choices}
    return {name: name in aliases for name in ("DB_METRICS", "DB_LEAK_THRESHOLD_S")}


METRICS_ON = {"DB_METRICS": "true", "DB_LEAK_THRESHOLD_S": "30"}
METRICS_OFF = {"DB_METRICS": "false", "DB_LEAK_THRESHOLD_S": "0"}


class Bench:
    """Runs measurements and records them, advancing the progress bar."""

    def __init__(self, run: Run, progress: Progress, task: Any, log_dir: Path) -> None:
        self.run, self.config = run, run.config
        self.progress, self.task, self.log_dir = progress, task, log_dir

    def total(self) -> int:
        c = self.config
        per_pass = len(ENDPOINTS) * (len(COMPARED) * len(c.backends) + 1)
        scaling = 0
        if "postgresql" in c.backends:
            scaling = (
                c.passes * 2 * len(c.concurrencies)
                + len(c.pool_sizes)
                + c.metrics_pairs * 2 * 2
                + c.passes * 2  # the sync suite
            )
        return per_pass * c.passes + scaling

    def start(self, app: str, url: str, pool_size: int | None = None, **env: str) -> AppServer:
        self.progress.update(self.task, description=f"starting {app}")
        server = AppServer(
            APPS[app],
            url,
            pool_size=pool_size or self.config.pool_size,
            extra_env=env,
            log_dir=self.log_dir,
        )
        return server.start()

    def measure(
        self,
        server: AppServer,
        endpoint: str,
        *,
        suite: str,
        backend: str,
        url: str,
        connections: int | None = None,
        variant: str = "",
        pass_no: int = 0,
        duration: float | None = None,
    ) -> Sample:
        c = self.config
        conns = connections or c.connections
        mode = ALL_ENDPOINTS[endpoint].mode
        name = server.spec.name + (f" {variant}" if variant else "")
        self.progress.update(
            self.task, description=f"{backend:<10} {name:<18} {endpoint:<13} c={conns}"
        )
        max_id = c.items if endpoint == "process_item" else c.users
        if endpoint == "process_item" and server.spec.uses_database:
            time.sleep(0.5)  # let the last run's background tasks finish
            database.reset_items(url)
        # Warm-up on the second half of the items, the measurement on the first.
        run_wrk(
            server.base,
            mode,
            seconds=c.warmup,
            connections=conns,
            max_id=max_id,
            first_id=c.items // 2 + 1,
        )
        sample = run_wrk(
            server.base, mode, seconds=duration or c.duration, connections=conns, max_id=max_id
        )
        if endpoint == "post_user" and server.spec.uses_database:
            database.drop_new_users(url, c.users)
        self.run.records.append(
            {
                "suite": suite,
                "backend": backend if server.spec.uses_database else "none",
                "app": server.spec.name,
                "variant": variant,
                "endpoint": endpoint,
                "connections": conns,
                "pool_size": server.pool_size,
                "pass": pass_no,
                "rss_mb": server.rss_mb(),
                **sample.as_dict(),
            }
        )
        self.progress.advance(self.task)
        return sample

    # -- suites ---------------------------------------------------------------------------

    def compare(self, backend: str, url: str, servers: list[AppServer]) -> None:
        for pass_no in range(self.config.passes):
            order = servers if pass_no % 2 == 0 else list(reversed(servers))
            for endpoint in ENDPOINTS:
                for server in order:
                    self.measure(
                        server, endpoint, suite="compare", backend=backend, url=url,
                        pass_no=pass_no,
                    )  # fmt: skip

    def concurrency(self, url: str, servers: list[AppServer]) -> None:
        # Every point twice, apps alternating, best pass kept: "share of peak" divides
        # two single measurements, and one disturbed pass would decide the target.
        for pass_no in range(self.config.passes):
            order = servers if pass_no % 2 == 0 else list(reversed(servers))
            for conns in self.config.concurrencies:
                for server in order:
                    self.measure(
                        server, "get_user", suite="concurrency", backend="postgresql", url=url,
                        connections=conns, pass_no=pass_no,
                    )  # fmt: skip

    def sync_endpoints(self, url: str) -> None:
        """users_api's sync ``def`` GET against the tutorial's ``get_db()`` with 100 threads."""
        with ExitStack() as stack:
            servers = []
            for name in ("users_api", "tutorial_sync"):
                server = self.start(name, url)
                stack.callback(server.stop)
                servers.append(server)
            for pass_no in range(self.config.passes):
                for server in servers if pass_no % 2 == 0 else servers[::-1]:
                    self.measure(
                        server, SYNC_ENDPOINT.key, suite="sync", backend="postgresql", url=url,
                        pass_no=pass_no,
                    )  # fmt: skip

    def pool_sizes(self, url: str) -> None:
        for size in self.config.pool_sizes:
            server = self.start("users_api", url, pool_size=size)
            try:
                self.measure(server, "get_user", suite="pool", backend="postgresql", url=url)
            finally:
                server.stop()

    def metrics(self, url: str) -> None:
        supported = metrics_toggles_supported()
        missing = [name for name, ok in supported.items() if not ok]
        if missing:
            self.run.notes.append(
                "Metrics on/off: this build does not read "
                + ", ".join(missing)
                + "; both variants ran the same code, so their difference is noise."
            )
        with ExitStack() as stack:
            on = self.start("users_api", url, **METRICS_ON)
            stack.callback(on.stop)
            off = self.start("users_api", url, **METRICS_OFF)
            stack.callback(off.stop)
            self.run.notes.append(
                "Metrics on/off: GET /metrics answered "
                f"{_status(on.base + '/metrics')} with DB_METRICS=true and "
                f"{_status(off.base + '/metrics')} with DB_METRICS=false."
            )
            # The cost sought (< 5%) is far below the machine's pass-to-pass noise, so the
            # two builds are measured in adjacent pairs, many times, and the report takes
            # the median of the pairs' ratios: slow drifts of the machine cancel out.
            for pass_no in range(self.config.metrics_pairs):
                pair = [(on, "metrics on"), (off, "metrics off")]
                for endpoint in ("get_user", "post_user"):
                    for server, variant in pair if pass_no % 2 == 0 else pair[::-1]:
                        self.measure(
                            server, endpoint, suite="metrics", backend="postgresql", url=url,
                            variant=variant, pass_no=pass_no,
                            duration=self.config.metrics_duration,
                        )  # fmt: skip


def _status(url: str) -> str:
    """The HTTP status *url* answers with (``"no answer"`` if none)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.status)
    except urllib.error.HTTPError as error:
        return str(error.code)
    except (urllib.error.URLError, OSError):
        return "no answer"


@contextmanager
def backend_database(backend: str, workdir: Path) -> Iterator[str]:
    """A fresh, migrated, empty database of *backend*; dropped afterwards."""
    if backend == "postgresql":
        with database.postgres_database() as url:
            yield url
    else:
        path = workdir / "bench.db"
        yield f"sqlite:///{path}"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


def execute(config: Config) -> Run:
    """Run every suite of *config* and return what was measured."""
    ensure_wrk()
    run = Run(config)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with (
        tempfile.TemporaryDirectory(prefix="dbpool-bench-") as tmp,
        Progress(*columns, transient=False) as progress,
        ExitStack() as stack,
    ):
        workdir = Path(tmp)
        stack.callback(pin_postgres(database.libpq(database.ADMIN_URL), LOAD_CPU))
        bench = Bench(run, progress, progress.add_task("preparing", total=None), workdir)
        progress.update(bench.task, total=bench.total())
        for backend in config.backends:
            with ExitStack() as phase:
                url = phase.enter_context(backend_database(backend, workdir))
                progress.update(bench.task, description=f"{backend}: migrating and seeding")
                database.migrate(url)
                database.seed(url, config.users, config.items_per_user)
                servers = []
                for app in COMPARED + (("nodb",) if backend == config.backends[0] else ()):
                    server = bench.start(app, url)
                    phase.callback(server.stop)
                    servers.append(server)
                bench.compare(backend, url, servers)
                if backend == "postgresql":
                    by_name = {s.spec.name: s for s in servers}
                    for name in ("orm", "orm_dbpool", "tutorial", "nodb"):
                        if name in by_name:
                            by_name[name].stop()
                    bench.concurrency(url, [by_name["users_api"], by_name["raw"]])
                    by_name["users_api"].stop()
                    by_name["raw"].stop()
                    bench.sync_endpoints(url)
                    bench.pool_sizes(url)
                    bench.metrics(url)
        progress.update(bench.task, description="done")
    return run
