"""Scenario 7: SIGTERM under load, with requests blocked on a lock.

What must hold, on SQLite and PostgreSQL: requests in flight that can finish within
``SHUTDOWN_GRACE_S`` are answered as usual; those that cannot (blocked on a row lock,
or on SQLite's write lock, held past the grace period) are answered 503 with
``Retry-After`` and ``Connection: close`` when it ends, by the library and before
uvicorn's own forced cancel (``--timeout-graceful-shutdown``), never 500; the server
exits cleanly, and afterwards no server session of the app is left.

Without the library's guard, uvicorn's cancel answers those requests 500
("Task cancelled, timeout graceful shutdown exceeded").

Figures: ``.venv/bin/pytest tests/reliability/test_shutdown.py -s``.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from collections.abc import Awaitable, Iterator
from contextlib import ExitStack, contextmanager

import httpx
import psycopg
import pytest
from sqlalchemy.engine import make_url

from tests.backends import libpq_url
from tests.pgstat import app_sessions
from tests.reliability.ledger import Ledger, Load, seed_users
from tests.servers import USERS_API, UvicornServer, uvicorn_server

__all__ = ["write_lock"]

pytestmark = [pytest.mark.slow, pytest.mark.timing]

GRACE_S = 2
SERVER_TIMEOUT_S = GRACE_S + 4  # uvicorn's forced cancel comes this long after SIGTERM
BLOCKED = 4
# After SIGTERM, a request started later than this is new work the app must refuse.
NEW_WORK_REFUSED_S = 0.1


@contextmanager
def write_lock(database_url: str, user_id: int) -> Iterator[psycopg.Connection | None]:
    """Hold a lock that the app's writes to *user_id* (and ``taken@example.com``) wait for.

    PostgreSQL: an open transaction that updated the user's row and inserted the email
    (its unique index entry). SQLite: the database's write lock (``BEGIN IMMEDIATE``).
    """
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        conn = sqlite3.connect(str(url.database), isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield None
        finally:
            conn.close()
        return
    with psycopg.connect(libpq_url(database_url)) as pg:
        pg.execute("UPDATE users SET name = 'locked' WHERE id = %s", (user_id,))
        pg.execute(
            "INSERT INTO users (name, email, created_at) VALUES ('t', 'taken@example.com', now())"
        )
        yield pg
        pg.rollback()


def metric(server: UvicornServer, name: str) -> int:
    """The primary pool's gauge *name* now (the app's ``/metrics``)."""
    text = httpx.get(server.url + "/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(f'{name}{{pool="primary"}}'):
            return int(float(line.split()[-1]))
    raise AssertionError(f"{name} not in /metrics:\n{text[:2000]}")


def writes_blocked(server: UvicornServer, database_url: str) -> int:
    """How many of the app's writes are stuck behind the test's lock now.

    Counted where only blocked writes show, never the read load: PostgreSQL's sessions
    of the app waiting for a lock; on SQLite the writer that holds the process's write
    gate (it waits in SQLite's busy handler, with a connection) plus those queued for the
    gate (``dbpool_write_gate_waiting``).
    """
    if make_url(database_url).get_backend_name() == "sqlite":
        queued = metric(server, "dbpool_write_gate_waiting")
        return queued + 1 if queued else 0
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        (count,) = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
            " AND application_name = 'fastapi_dbpool:primary' AND wait_event_type = 'Lock'",
            (make_url(database_url).database,),
        ).fetchone() or (0,)
    return int(count)


async def blocked_writes(
    client: httpx.AsyncClient, user_id: int
) -> list[tuple[httpx.Response, float]]:
    """Half renames of the locked user (a session), half creates of the taken email (direct).

    Each answer comes with the moment (``time.monotonic()``) it arrived.
    """

    async def timed(request: Awaitable[httpx.Response]) -> tuple[httpx.Response, float]:
        answer = await request
        return answer, time.monotonic()

    return await asyncio.gather(
        *(
            timed(
                client.patch(f"/users/{user_id}", json={"name": f"n{n}"})
                if n % 2
                else client.post("/users", json={"name": "x", "email": "taken@example.com"})
            )
            for n in range(BLOCKED)
        )
    )


async def sigterm_with_blocked_requests(
    database_url: str, *, release_after_s: float | None
) -> tuple[list[httpx.Response], list[float], Ledger, float, str, int | None]:
    """SIGTERM while BLOCKED writes wait on a lock, released *release_after_s* after it.

    Returns the blocked requests' answers, the seconds from SIGTERM to each, the
    ledger of a read load that ran meanwhile, the moment of SIGTERM in the ledger's
    seconds, the server's log and its exit code.
    """
    env = {
        "DATABASE_URL": database_url,
        "DB_POOL_SIZE": "10",
        "DB_POOL_TIMEOUT": "30",
        "DB_SQLITE_BUSY_TIMEOUT_MS": "30000",
        "SHUTDOWN_GRACE_S": str(GRACE_S),
    }
    with uvicorn_server(
        USERS_API, env, access_log=False, graceful_timeout=SERVER_TIMEOUT_S
    ) as server:
        (user_id, *readable) = await asyncio.to_thread(seed_users, server.url, 5)
        load = Load(server.url, readable, clients=5, mix={"get_user": 1}, timeout=30)
        reads = asyncio.create_task(load.run(seconds=60))
        with ExitStack() as lock:
            lock.enter_context(write_lock(database_url, user_id))
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
                writes = asyncio.create_task(blocked_writes(client, user_id))
                # Polled with a deadline: the count can only reach BLOCKED once every
                # write waits on the lock, and stays there until the lock is released.
                deadline = time.monotonic() + 30
                blocked = 0
                while blocked < BLOCKED:
                    assert time.monotonic() < deadline, f"only {blocked} writes blocked"
                    await asyncio.sleep(0.05)
                    blocked = await asyncio.to_thread(writes_blocked, server, database_url)
                await load.until(requests=len(load.ledger.entries) + 20, timeout=10)
                signalled, sigterm_at = time.monotonic(), load.now()
                server.process.send_signal(signal.SIGTERM)
                if release_after_s is not None:
                    await asyncio.sleep(release_after_s)  # the writes are in flight meanwhile
                    lock.close()
                answered = await writes
            load.stop()
            ledger = await reads
            if make_url(database_url).get_backend_name() == "sqlite":
                # The statement blocked on SQLite's lock is in a driver thread that
                # nothing interrupts before DB_SQLITE_BUSY_TIMEOUT_MS; the process
                # exits once it ends. PostgreSQL's exits with the lock still held.
                lock.close()
            exit_code = await asyncio.to_thread(server.process.wait, SERVER_TIMEOUT_S + 10)
        log = server.log()
    return (
        [answer for answer, _ in answered],
        [at - signalled for _, at in answered],
        ledger,
        sigterm_at,
        log,
        exit_code,
    )


def assert_clean_exit(
    ledger: Ledger, sigterm_at: float, log: str, exit_code: int | None, report: str
) -> None:
    """No 500 in the read load, no new work after SIGTERM, no forced cancel, a clean exit."""
    assert ledger.count(500) == 0, report
    # Reads in flight at SIGTERM are answered; afterwards the server refuses new
    # connections (no answer) or answers 503 on a connection still open.
    assert set(ledger.statuses) <= {200, 503, None}, report
    # The app stops taking new work: a request started after the signal (and the
    # moment the server takes to see it) is refused, or answered 503 with
    # Retry-After; never served.
    late = ledger.between(sigterm_at + NEW_WORK_REFUSED_S, float("inf"))
    assert late, f"{report}\nno request started after SIGTERM: the check proved nothing"
    served = [e for e in late if e.status is not None and (e.status != 503 or not e.retry_after)]
    assert served == [], f"{report}\nstarted after SIGTERM and answered: {served[:5]}"
    # Their 503 says that nothing ran (the guard refused them before the app saw
    # them): the ledger counts a write refused so as a definite failure.
    refused = [e for e in late if e.status == 503]
    assert all(e.code == "shutting_down" for e in refused), f"{report}\n{refused[:5]}"
    assert "timeout graceful shutdown exceeded" not in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    # uvicorn re-raises SIGTERM after a graceful shutdown: -15 is a clean exit.
    assert exit_code in (0, -signal.SIGTERM), log[-3000:]


def no_app_sessions_left(database_url: str) -> list[str]:
    """The app's server sessions, polled until none is left (PostgreSQL), for up to 5 s."""
    if make_url(database_url).get_backend_name() == "sqlite":
        return []
    deadline = time.monotonic() + 5
    sessions = app_sessions(database_url)
    while sessions and time.monotonic() < deadline:
        time.sleep(0.05)
        sessions = app_sessions(database_url)
    return sessions


async def test_request_that_cannot_finish_is_answered_503(database_url: str) -> None:
    answers, seconds, ledger, sigterm_at, log, exit_code = await sigterm_with_blocked_requests(
        database_url, release_after_s=None
    )
    report = (
        f"\nshutdown, lock held: blocked {[a.status_code for a in answers]} after "
        f"{[round(s, 2) for s in seconds]} s (grace {GRACE_S} s, server cancel "
        f"{SERVER_TIMEOUT_S} s); {ledger.summary('reads: ')}"
    )
    print(report)
    for answer in answers:
        assert answer.status_code == 503, report
        assert answer.headers.get("retry-after") == "1", report
        assert answer.headers.get("connection") == "close", report
        # Cut while it ran (it may have written): the shape of every error body, and a
        # code that says the outcome is unknown.
        assert answer.json() == {
            "detail": answer.json()["detail"],
            "code": "shutdown_grace_expired",
            "reason": "shutting_down",
        }, report
    # At the end of the grace period, well before uvicorn's cancel.
    assert all(GRACE_S - 0.2 <= s < SERVER_TIMEOUT_S - 1 for s in seconds), report
    assert_clean_exit(ledger, sigterm_at, log, exit_code, report)
    assert no_app_sessions_left(database_url) == [], report


async def test_requests_in_flight_finish_within_the_grace_period(database_url: str) -> None:
    answers, seconds, ledger, sigterm_at, log, exit_code = await sigterm_with_blocked_requests(
        database_url, release_after_s=0.5
    )
    report = (
        f"\nshutdown, lock released after 0.5 s: blocked {[a.status_code for a in answers]}"
        f" after {[round(s, 2) for s in seconds]} s; {ledger.summary('reads: ')}"
    )
    print(report)
    # Renames succeed; the creates of the taken email get 409 on PostgreSQL (the
    # other transaction's row went away with its rollback: 201 then) or 201 on SQLite.
    assert all(a.status_code in (200, 201, 409) for a in answers), report
    assert all(s < GRACE_S for s in seconds), report
    assert_clean_exit(ledger, sigterm_at, log, exit_code, report)
    assert no_app_sessions_left(database_url) == [], report
