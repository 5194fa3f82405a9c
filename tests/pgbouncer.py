"""A PgBouncer of the tests' own on a free port, in front of the tests' PostgreSQL.

Transaction pooling is what makes PgBouncer hard for drivers: each transaction may run
on a different server connection, so session state does not follow the client
(prepared statements, ``SET``), and startup parameters other than a handful are
refused. :class:`PgBouncer` writes an ini and a userlist into a temporary directory,
starts ``pgbouncer`` on a free port (as the ``postgres`` user when the tests run as
root: PgBouncer refuses root) and deletes it all when stopped. Without the binary the
test skips, or fails under REQUIRE_SYSTEM_DEPS=1.

Usage::

    from tests.pgbouncer import pgbouncer   # the module's fixture, in transaction mode

    def test_x(pgbouncer: PgBouncer) -> None:
        url = pgbouncer.url_for(database_url)  # same database, through PgBouncer

    def test_y() -> None:                      # a PgBouncer configured for one test
        with through_pgbouncer(database_url, pool_mode="session") as url:
            ...
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.backends import ADMIN_URL, REQUIRE_SYSTEM_DEPS, skip_or_fail
from tests.pgcluster import as_server_user, give_to_server_user
from tests.servers import free_port

__all__ = [
    "PgBouncer",
    "pgbouncer",
    "pgbouncer_version",
    "require_pgbouncer",
    "through_pgbouncer",
]

# Server connections per database and user in the module fixture: fewer than the
# app's pool, so client connections share server connections, and a statement
# prepared by one client can meet another client's transaction.
SERVER_POOL_SIZE = 3


def require_pgbouncer() -> str:
    """The pgbouncer binary; skip the test without it (fail under REQUIRE_SYSTEM_DEPS=1)."""
    binary = shutil.which("pgbouncer")
    if binary is None:
        skip_or_fail(
            "pgbouncer is not installed (apt-get install pgbouncer)", required=REQUIRE_SYSTEM_DEPS
        )
    assert binary is not None
    return binary


def pgbouncer_version() -> str:
    """The installed PgBouncer's version, e.g. ``1.18.0``."""
    out = subprocess.run(["pgbouncer", "--version"], capture_output=True, text=True, check=True)
    return out.stdout.split()[1]


class PgBouncer:
    """One pgbouncer process on 127.0.0.1 in front of *upstream*'s server.

    Args:
        pool_mode: ``session``, ``transaction`` or ``statement``.
        pool_size: Server connections per database and user (``default_pool_size``).
        admin_users: Users allowed on the admin console (``SHOW CONFIG``), comma-separated.
        upstream: A URL of the PostgreSQL server to pool connections to.
        options: More ``[pgbouncer]`` settings, e.g. ``{"server_login_retry": "1"}``.
    """

    def __init__(
        self,
        *,
        pool_mode: str = "transaction",
        pool_size: int = 5,
        admin_users: str = "",
        upstream: str = ADMIN_URL,
        options: Mapping[str, str] | None = None,
    ) -> None:
        self.binary = require_pgbouncer()
        target = make_url(upstream)
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="dbpool-pgbouncer-"))
        give_to_server_user(self.root)
        self.logfile = self.root / "pgbouncer.log"
        userlist = self.root / "userlist.txt"
        userlist.write_text(f'"{target.username or "postgres"}" ""\n')
        self.ini = self.root / "pgbouncer.ini"
        self.ini.write_text(
            "[databases]\n"
            f"* = host={target.host or '127.0.0.1'} port={target.port or 5432}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {userlist}\n"
            f"pool_mode = {pool_mode}\ndefault_pool_size = {pool_size}\n"
            f"admin_users = {admin_users}\nmax_client_conn = 200\n"
            f"logfile = {self.logfile}\npidfile = {self.root / 'pgbouncer.pid'}\n"
            + "".join(f"{key} = {value}\n" for key, value in (options or {}).items())
        )
        self.process: subprocess.Popen[bytes] | None = None

    def url_for(self, database_url: str) -> str:
        """*database_url*'s database and user, reached through this PgBouncer."""
        url = make_url(database_url).set(host="127.0.0.1", port=self.port)
        return url.render_as_string(hide_password=False)

    def log(self) -> str:
        """PgBouncer's log so far."""
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def start(self) -> None:
        """Start pgbouncer and wait until it accepts TCP connections."""
        self.process = subprocess.Popen(
            as_server_user([self.binary, str(self.ini)]),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"pgbouncer exited ({self.process.returncode}):\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"pgbouncer did not listen within 10 s:\n{self.log()}")

    def stop(self) -> None:
        """Stop pgbouncer (SIGTERM: immediate shutdown) and delete its directory."""
        process = self.process
        try:
            if process is not None and process.poll() is None:
                # runuser passes the signal on to pgbouncer.
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=5)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PgBouncer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextmanager
def through_pgbouncer(
    database_url: str, *, pool_mode: str = "session", admin_users: str = ""
) -> Iterator[str]:
    """Run a PgBouncer for one test; yield *database_url* reached through it."""
    with PgBouncer(pool_mode=pool_mode, admin_users=admin_users) as bouncer:
        yield bouncer.url_for(database_url)


@pytest.fixture(scope="module")
def pgbouncer() -> Iterator[PgBouncer]:
    """A PgBouncer in transaction mode in front of the tests' PostgreSQL server."""
    with PgBouncer(pool_mode="transaction", pool_size=SERVER_POOL_SIZE) as bouncer:
        yield bouncer
