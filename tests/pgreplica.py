"""A streaming replica of a throwaway cluster, for the read-replica tests.

``pg_basebackup -R`` copies the primary and writes the standby's connection settings;
the copy then starts on a port of its own and replays the primary's WAL. PostgreSQL 15's
defaults (``wal_level=replica``, ``max_wal_senders=10``, ``hot_standby=on``) and the
trust entries ``initdb -A trust`` writes for replication are all it needs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from tests.backends import libpq_url
from tests.pgcluster import PgCluster

__all__ = ["primary_and_replica", "wait_replayed"]


@contextmanager
def primary_and_replica() -> Iterator[tuple[PgCluster, PgCluster]]:
    """Start a primary and a hot standby streaming from it; yield both."""
    with PgCluster() as primary:
        standby = PgCluster(primary.bindir)
        try:
            standby._run(
                "pg_basebackup",
                "-h",
                "127.0.0.1",
                "-p",
                str(primary.port),
                "-U",
                "postgres",
                "-D",
                str(standby.datadir),
                "-R",
                "-X",
                "stream",
                "--no-sync",
            )
            standby.start()
            yield primary, standby
        finally:
            standby.destroy()


def wait_replayed(primary_url: str, standby_url: str, timeout: float = 20) -> None:
    """Wait until the standby has replayed everything the primary has written so far.

    The insert position: it covers every commit made so far, whether or not the WAL
    writer has written it out yet.
    """
    with psycopg.connect(libpq_url(primary_url), autocommit=True) as conn:
        target = conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0]  # type: ignore[index]
    deadline = time.monotonic() + timeout
    with psycopg.connect(libpq_url(standby_url), autocommit=True) as conn:
        while True:
            caught_up = conn.execute(
                "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)
            ).fetchone()[0]  # type: ignore[index]
            if caught_up:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"standby did not replay up to {target} in {timeout} s")
            time.sleep(0.05)
