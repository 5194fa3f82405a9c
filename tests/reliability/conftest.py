"""Fixtures of the fault scenarios: a cluster of the module's own, its database, a proxy.

Every scenario runs against a throwaway PostgreSQL cluster (tests/pgcluster.py) that it
may stop, restart or crash, never the shared server on 5432. The users_api's schema is
migrated (Alembic) once per test run into a template cluster; each module gets a copy of
it, started on a port of its own, and the tables are emptied before each test.

``make test`` runs the short variant of each scenario; ``make reliability``
(``RELIABILITY_FULL=1``) the full one. :func:`scaled` picks the figure of the variant.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import psycopg
import pytest

from tests.backends import REQUIRE_POSTGRES, libpq_url, migrate, skip_or_fail
from tests.pgcluster import PgCluster, server_bindir
from tests.reliability.proxy import FaultProxy

__all__ = ["FULL", "app_database", "base_env", "cluster_database", "pg_cluster", "proxy", "scaled"]

FULL = os.environ.get("RELIABILITY_FULL") == "1"

# The deadlines every scenario runs with, small so that the figures come quickly:
# a request waits at most POOL_TIMEOUT_S for a pooled connection and a new connection
# attempt at most CONNECT_TIMEOUT_S (see docs/reliability.md, "Deadline arithmetic").
POOL_TIMEOUT_S = 2
CONNECT_TIMEOUT_S = 2
# What the loaded machine may add to a deadline before a request counts as hung.
MARGIN_S = 3.0


def scaled(short: float, full: float) -> float:
    """*full* under ``make reliability``, else *short*."""
    return full if FULL else short


def base_env(database_url: str, **overrides: str) -> dict[str, str]:
    """The app's settings for the scenarios: a pool of 5 and short deadlines."""
    env = {
        "DATABASE_URL": database_url,
        "DB_POOL_SIZE": "5",
        "DB_MAX_OVERFLOW": "0",
        "DB_POOL_TIMEOUT": str(POOL_TIMEOUT_S),
        "DB_CONNECT_TIMEOUT": str(CONNECT_TIMEOUT_S),
        "DB_METRICS": "false",
    }
    return env | overrides


def cluster_database(cluster: PgCluster, name: str = "users_api") -> str:
    """Create database *name* on *cluster*, migrate it; return its URL."""
    with psycopg.connect(libpq_url(cluster.url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]
        conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
    url = cluster.url.rsplit("/", 1)[0] + f"/{name}"
    migrate(url)
    return url


@pytest.fixture(scope="session")
def _migrated_template() -> Iterator[PgCluster]:
    """A stopped cluster whose users_api database is migrated: copied by every module."""
    if server_bindir() is None:
        skip_or_fail(
            "PostgreSQL server binaries (pg_config --bindir) are not installed",
            required=REQUIRE_POSTGRES,
        )
    cluster = PgCluster()
    try:
        cluster.init()
        cluster.start()
        cluster_database(cluster)
        cluster.stop("fast")  # a clean shutdown: the copies start without recovery
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="module")
def pg_cluster(_migrated_template: PgCluster) -> Iterator[PgCluster]:
    """A running cluster of the module's own, with a migrated users_api database."""
    with PgCluster(template=_migrated_template.datadir) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def _migrated(pg_cluster: PgCluster) -> str:
    return pg_cluster.url.rsplit("/", 1)[0] + "/users_api"


@pytest.fixture
def app_database(_migrated: str, pg_cluster: PgCluster) -> str:
    """The URL of the module cluster's migrated users_api database, emptied, server up."""
    if not pg_cluster.running:
        pg_cluster.start()
    with psycopg.connect(libpq_url(_migrated), autocommit=True) as conn:
        conn.execute("TRUNCATE items, users RESTART IDENTITY CASCADE")
    return _migrated


@pytest.fixture
def proxy(pg_cluster: PgCluster) -> Iterator[FaultProxy]:
    """A fault proxy in front of the module's cluster, passing everything."""
    with FaultProxy(("127.0.0.1", pg_cluster.port)) as fault_proxy:
        yield fault_proxy
