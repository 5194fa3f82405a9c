"""A real PgBouncer in front of the test PostgreSQL, on a free port, for one test.

PgBouncer refuses to run as root, so as root it runs as the ``postgres`` user, from a
temporary directory that user can read. It is stopped and its directory removed after
the test. Without the ``pgbouncer`` binary the test skips, or fails under
REQUIRE_SYSTEM_DEPS=1.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.engine import make_url

from tests.backends import ADMIN_URL, REQUIRE_SYSTEM_DEPS, skip_or_fail


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pgbouncer_version() -> str:
    """The installed PgBouncer's version, e.g. ``1.18.0``."""
    out = subprocess.run(["pgbouncer", "--version"], capture_output=True, text=True, check=True)
    return out.stdout.split()[1]


@contextmanager
def pgbouncer(
    database_url: str, *, pool_mode: str = "session", admin_users: str = ""
) -> Iterator[str]:
    """Run PgBouncer in front of *database_url*'s server; yield the same URL through it."""
    binary = shutil.which("pgbouncer")
    if binary is None:
        skip_or_fail(
            "pgbouncer is not installed (apt-get install pgbouncer)", required=REQUIRE_SYSTEM_DEPS
        )
    assert binary is not None
    server = make_url(ADMIN_URL)
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="dbpool-pgbouncer-"))
    user = "postgres" if os.geteuid() == 0 else None
    (workdir / "users.txt").write_text(f'"{server.username}" ""\n')
    (workdir / "pgbouncer.ini").write_text(
        f"""[databases]
* = host={server.host} port={server.port or 5432}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {workdir}/users.txt
pool_mode = {pool_mode}
admin_users = {admin_users}
max_client_conn = 200
default_pool_size = 5
logfile = {workdir}/pgbouncer.log
"""
    )
    if user is not None:
        entry = pwd.getpwnam(user)
        for path in (workdir, *workdir.iterdir()):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    process = subprocess.Popen(
        [binary, str(workdir / "pgbouncer.ini")],
        user=user,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port, process)
        yield make_url(database_url).set(port=port).render_as_string(hide_password=False)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def _wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"pgbouncer exited with {process.returncode} at start")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("pgbouncer did not listen within 10 s")
