"""The benchmark's databases: a fresh PostgreSQL database and a SQLite file, seeded.

Both get the users_api schema from its Alembic migrations, then ``users`` rows and
``items_per_user`` items per user, written by the database itself (generate_series, a
recursive CTE) so that seeding takes seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
ADMIN_URL = os.environ.get(
    "BENCH_POSTGRES_URL",
    os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
)


def libpq(url: str) -> str:
    """*url* in libpq spelling (no +driver)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def sync_url(url: str) -> str:
    """*url* through a sync driver (psycopg 3 or sqlite3), for seeding."""
    parsed = make_url(url)
    driver = "sqlite" if parsed.drivername.startswith("sqlite") else "postgresql+psycopg"
    return parsed.set(drivername=driver).render_as_string(hide_password=False)


@contextmanager
def postgres_database() -> Iterator[str]:
    """Create an empty PostgreSQL database; yield its URL; drop it afterwards."""
    name = f"dbpool_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(libpq(ADMIN_URL), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
    try:
        yield make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(libpq(ADMIN_URL), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]


def migrate(url: str) -> None:
    """Create the users_api schema with its own migrations."""
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=ROOT,
        env=dict(os.environ, DATABASE_URL=url),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        raise SystemExit(f"alembic upgrade head failed:\n{result.stderr[-2000:]}")


def seed(url: str, users: int, items_per_user: int) -> None:
    """Insert *users* users and *items_per_user* pending items for each."""
    engine = create_engine(sync_url(url))
    items = users * items_per_user
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(
                text(
                    "INSERT INTO users (name, email, created_at) "
                    "SELECT 'User ' || g, 'user' || g || '@bench.example', now() "
                    "FROM generate_series(1, :n) g"
                ),
                {"n": users},
            )
            conn.execute(
                text(
                    "INSERT INTO items (owner_id, title, description, status, created_at) "
                    "SELECT (g - 1) / :per + 1, 'item ' || g, "
                    "'a few words to count in item ' || g, 'pending', now() "
                    "FROM generate_series(1, :n) g"
                ),
                {"per": items_per_user, "n": items},
            )
        else:
            now = "strftime('%Y-%m-%d %H:%M:%f', 'now')"
            conn.execute(
                text(
                    "INSERT INTO users (name, email, created_at) "
                    "WITH RECURSIVE seq(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM seq "
                    "WHERE g < :n) "
                    f"SELECT 'User ' || g, 'user' || g || '@bench.example', {now} FROM seq"
                ),
                {"n": users},
            )
            conn.execute(
                text(
                    "INSERT INTO items (owner_id, title, description, status, created_at) "
                    "WITH RECURSIVE seq(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM seq "
                    "WHERE g < :n) "
                    "SELECT (g - 1) / :per + 1, 'item ' || g, "
                    f"'a few words to count in item ' || g, 'pending', {now} FROM seq"
                ),
                {"per": items_per_user, "n": items},
            )
    analyse(engine.url.render_as_string(hide_password=False))
    engine.dispose()


def analyse(url: str) -> None:
    """Refresh the planner's statistics (VACUUM ANALYZE / ANALYZE)."""
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("VACUUM ANALYZE" if engine.dialect.name == "postgresql" else "ANALYZE"))
    engine.dispose()


def execute(url: str, sql: str, **params: object) -> None:
    """Run one statement in its own transaction."""
    engine = create_engine(sync_url(url))
    with engine.begin() as conn:
        conn.execute(text(sql), params)
    engine.dispose()


def reset_items(url: str) -> None:
    """Put every item back to ``pending`` so that process requests have work to claim."""
    execute(
        url,
        "UPDATE items SET status = 'pending', result = NULL, processed_at = NULL "
        "WHERE status <> 'pending'",
    )


def drop_new_users(url: str, seeded: int) -> None:
    """Delete the users that POST measurements created, keeping the table the same size."""
    execute(url, "DELETE FROM users WHERE id > :n", n=seeded)
