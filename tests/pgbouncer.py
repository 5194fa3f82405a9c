"""A PgBouncer of the tests' own, in transaction pooling mode, in front of a PostgreSQL.

Transaction pooling is what makes PgBouncer hard for drivers: each transaction may run
on a different server connection, so session state does not follow the client
(prepared statements, ``SET``), and startup parameters other than a handful are
refused. The fixture writes an ini and a userlist into a temporary directory, starts
``pgbouncer`` on a free port (as the ``postgres`` user when the tests run as root:
PgBouncer refuses root) and stops it after the module.

Usage::

    from tests.pgbouncer import pgbouncer   # the fixture

    def test_x(pgbouncer: PgBouncer) -> None:
        url = pgbouncer.url_for(database_url)  # same database, through PgBouncer
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.backends import ADMIN_URL, REQUIRE_SYSTEM_DEPS, skip_or_fail
from tests.pgcluster import as_server_user, free_port, give_to_server_user

__all__ = ["PgBouncer", "pgbouncer"]

# Server connections per database and user: fewer than the app's pool, so client
# connections share server connections, and a statement prepared by one client can
# meet another client's transaction.
SERVER_POOL_SIZE = 3


class PgBouncer:
    """One pgbouncer process in transaction mode on 127.0.0.1, in front of *upstream*."""

    def __init__(self, upstream: str = ADMIN_URL, pool_mode: str = "transaction") -> None:
        binary = shutil.which("pgbouncer")
        if binary is None:
            raise RuntimeError("pgbouncer is not installed")
        self.binary = binary
        target = make_url(upstream)
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="dbpool-pgbouncer-"))
        give_to_server_user(self.root)
        self.logfile = self.root / "pgbouncer.log"
        userlist = self.root / "userlist.txt"
        userlist.write_text('"postgres" ""\n')
        self.ini = self.root / "pgbouncer.ini"
        self.ini.write_text(
            "[databases]\n"
            f"* = host={target.host or '127.0.0.1'} port={target.port or 5432}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {userlist}\n"
            f"pool_mode = {pool_mode}\ndefault_pool_size = {SERVER_POOL_SIZE}\n"
            "max_client_conn = 200\n"
            f"logfile = {self.logfile}\npidfile = {self.root / 'pgbouncer.pid'}\n"
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


@pytest.fixture(scope="module")
def pgbouncer() -> Iterator[PgBouncer]:
    """A PgBouncer in transaction mode in front of the tests' PostgreSQL server."""
    if shutil.which("pgbouncer") is None:
        skip_or_fail("pgbouncer is not installed", required=REQUIRE_SYSTEM_DEPS)
    bouncer = PgBouncer()
    try:
        bouncer.start()
        yield bouncer
    finally:
        bouncer.stop()
