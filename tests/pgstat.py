"""What the PostgreSQL server sees of an app: its sessions in ``pg_stat_activity``.

The library names its connections ``fastapi_dbpool:<pool name>`` (``application_name``),
so a test can find the sessions of its app in its own database, apart from those of
other test runs on the same server.
"""

from __future__ import annotations

import psycopg
from sqlalchemy.engine import make_url

from tests.backends import libpq_url

__all__ = ["app_sessions", "idle_in_transaction"]


def app_sessions(url: str, application_name: str = "fastapi_dbpool:primary") -> list[str]:
    """The ``state`` of each server session of the app connected to *url*'s database."""
    database = make_url(url).database
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT state FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
            (database, application_name),
        ).fetchall()
    return [str(state) for (state,) in rows]


def idle_in_transaction(url: str, application_name: str = "fastapi_dbpool:primary") -> int:
    """How many of the app's server sessions sit ``idle in transaction`` (aborted too)."""
    return sum(
        state.startswith("idle in transaction") for state in app_sessions(url, application_name)
    )
