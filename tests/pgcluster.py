"""A throwaway PostgreSQL cluster for tests that stop and start the server.

The shared server on 127.0.0.1:5432 must never be stopped, so tests that need a
database to go down (or to be down at start-up) get a cluster of their own: ``initdb``
into a temporary directory, ``pg_ctl start`` on a free port, trust authentication,
no fsync. The server binaries come from ``pg_config --bindir``. PostgreSQL refuses to
run as root, so when the tests run as root the commands run as the ``postgres`` user.

Usage::

    with PgCluster() as cluster:       # initdb + start
        url = cluster.url               # postgresql://postgres@127.0.0.1:PORT/postgres
        cluster.stop()                  # the database is now down
        cluster.start()                 # and back, on the same port

Or the ``pg_cluster`` fixture of a test module: ``from tests.pgcluster import pg_cluster``.
"""

from __future__ import annotations

import atexit
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.backends import REQUIRE_POSTGRES, skip_or_fail
from tests.servers import free_port

__all__ = [
    "PgCluster",
    "as_server_user",
    "give_to_server_user",
    "pg_cluster",
    "server_bindir",
]

RUN_AS = "postgres"


def server_bindir() -> Path | None:
    """The directory of ``initdb`` and ``pg_ctl``, or None when they are not installed."""
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        return None
    out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
    bindir = Path(out.stdout.strip())
    return bindir if (bindir / "initdb").exists() and (bindir / "pg_ctl").exists() else None


class PgCluster:
    """One PostgreSQL server in a temporary directory, on a free port of 127.0.0.1."""

    def __init__(self, bindir: Path | None = None, *, template: Path | None = None) -> None:
        found = bindir or server_bindir()
        if found is None:
            raise RuntimeError("PostgreSQL server binaries not found (pg_config --bindir)")
        self.bindir = found
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="dbpool-pgcluster-"))
        self.datadir = self.root / "data"
        self.logfile = self.root / "server.log"
        self.running = False
        # A data directory to copy instead of a fresh initdb (a stopped cluster's).
        self.template = template
        give_to_server_user(self.root)

    @property
    def url(self) -> str:
        """URL of the cluster's ``postgres`` database (user ``postgres``, trust auth)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 60) -> None:
        command = as_server_user([str(self.bindir / args[0]), *args[1:]])
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            log = self.logfile.read_text() if self.logfile.exists() else ""
            raise RuntimeError(
                f"{args[0]} failed ({result.returncode}): {result.stderr[-1500:]}\n{log[-1500:]}"
            )

    def init(self) -> None:
        """Create the cluster: trust authentication, superuser ``postgres``.

        ``initdb`` runs once per test process, into a template; each cluster is a copy
        of it (a few milliseconds instead of seconds).
        """
        template = self.template or _template(self.bindir)
        result = subprocess.run(
            as_server_user(["cp", "-a", str(template), str(self.datadir)]),
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            raise RuntimeError(f"copying the cluster template failed: {result.stderr[-1500:]}")

    def initdb(self, datadir: Path) -> None:
        """Run ``initdb`` into *datadir*."""
        self._run(
            "initdb",
            "-D",
            str(datadir),
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        )

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        # fsync=off is safe here: the tests crash the server process, never the machine.
        # synchronous_commit stays on: `pg_ctl stop -m immediate` right after a commit
        # (a migration, say) would otherwise lose it, and the next test would fail.
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} "
            "-c fsync=off -c full_page_writes=off "
            "-c max_connections=50 -c shared_buffers=16MB"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.datadir),
            "-l",
            str(self.logfile),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )
        self.running = True

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server; by default at once (``-m immediate``), as in a crash.

        Args:
            mode: ``pg_ctl``'s shutdown mode: ``immediate`` (a crash: no checkpoint,
                recovery at the next start), ``fast`` (sessions terminated, clean
                shutdown) or ``smart`` (waits for sessions to end).
        """
        if self.running:
            self._run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "stop")
            self.running = False

    def restart(self, mode: str = "fast") -> None:
        """Stop the server (*mode* as in :meth:`stop`) and start it again on the same port."""
        self.stop(mode)
        self.start()

    def destroy(self) -> None:
        """Stop the server if it runs and delete its directory."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PgCluster:
        try:
            self.init()
            self.start()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.destroy()


_TEMPLATES: dict[Path, Path] = {}


def _template(bindir: Path) -> Path:
    """A data directory made by ``initdb`` once per process, removed at exit."""
    found = _TEMPLATES.get(bindir)
    if found is None:
        root = Path(tempfile.mkdtemp(prefix="dbpool-pgtemplate-"))
        give_to_server_user(root)
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        maker = PgCluster.__new__(PgCluster)
        maker.bindir, maker.logfile = bindir, root / "initdb.log"
        maker.initdb(root / "data")
        found = _TEMPLATES[bindir] = root / "data"
    return found


def _server_user() -> pwd.struct_passwd | None:
    """The user servers run as: ``postgres`` when we are root (servers refuse root)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(RUN_AS)
    except KeyError:
        raise RuntimeError(f"running as root and there is no {RUN_AS!r} user") from None


def as_server_user(command: list[str]) -> list[str]:
    """*command*, run as the server user when we are root."""
    user = _server_user()
    return command if user is None else ["runuser", "-u", user.pw_name, "--", *command]


def give_to_server_user(path: Path) -> None:
    """Make *path* (a directory we created) the server user's, when we are root."""
    user = _server_user()
    if user is not None:
        os.chown(path, user.pw_uid, user.pw_gid)


@pytest.fixture(scope="module")
def pg_cluster() -> Iterator[PgCluster]:
    """A running throwaway cluster for the module; tests may stop and start it."""
    if server_bindir() is None:
        skip_or_fail(
            "PostgreSQL server binaries (pg_config --bindir) are not installed",
            required=REQUIRE_POSTGRES,
        )
    with PgCluster() as cluster:
        yield cluster
