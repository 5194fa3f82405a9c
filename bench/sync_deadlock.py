"""FastAPI issue #3205 measured: sync endpoints against a pool of 5, at 40 and 100 clients.

Runs tests/apps/sync_load.py in a real uvicorn process, in each shape (the tutorial's
``get_db()``, ``SyncSessionDep``),
and loads it with wrk. The tutorial's shape deadlocks once clients outnumber the
threadpool's 40 threads plus the pool's 5 connections.

    .venv/bin/python -m bench.sync_deadlock                  # PostgreSQL, 40 and 100 clients
    .venv/bin/python -m bench.sync_deadlock --backend sqlite --seconds 10
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.apps.sync_load import SHAPES
from tests.backends import migrate, postgres_database
from tests.seed import seed_user_with_items
from tests.servers import uvicorn_server
from tests.wrk import run_wrk, wrk_path


@contextmanager
def _database(backend: str) -> Iterator[str]:
    if backend == "postgres":
        with postgres_database("dbpool_bench") as url:
            yield url
    else:
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite:///{tmp}/bench.db"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--seconds", type=int, default=20, help="per run (default 20)")
    parser.add_argument("--clients", type=int, nargs="+", default=[40, 100])
    parser.add_argument("--shapes", nargs="+", choices=SHAPES, default=list(SHAPES))
    args = parser.parse_args()
    if wrk_path() is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    with _database(args.backend) as url:
        migrate(url)
        user_id = seed_user_with_items(url, items=10)
        env = {"DATABASE_URL": url, "DB_POOL_SIZE": "5", "DB_MAX_OVERFLOW": "0"}
        env["DB_POOL_TIMEOUT"] = "5"
        print(
            f"{args.backend}, pool_size=5 max_overflow=0 DB_POOL_TIMEOUT=5, {args.seconds:g} s runs"
        )
        for shape in args.shapes:
            log = Path(tempfile.gettempdir()) / f"sync_deadlock_{shape}.log"
            with uvicorn_server(
                "tests.apps.sync_load:create_app",
                {**env, "SYNC_LOAD_SHAPE": shape},
                factory=True,
                access_log=False,
                log_path=log,
            ) as server:
                for clients in args.clients:
                    result = run_wrk(
                        f"{server.url}/users/{user_id}/items",
                        clients=clients,
                        seconds=args.seconds,
                    )
                    print(f"{shape:<18} {result.summary()}", flush=True)


if __name__ == "__main__":
    main()
