"""Scenario 6: ``make run WORKERS=4``, under mixed load, within the connection budget.

What must hold: ``make run WORKERS=4`` serves with 4 uvicorn workers, each with its own
engine created after it started (uvicorn spawns its workers; an engine inherited across
a fork is refused, tests/integration/test_fork.py); under mixed load there is no error
at all; and the app's server connections, sampled from ``pg_stat_activity`` all along,
never exceed the budget the start-up check computes for 4 workers
(``workers x (DB_POOL_SIZE + DB_MAX_OVERFLOW + 1 probe)``).

Figures: ``.venv/bin/pytest tests/reliability/test_workers.py -s``
(``RELIABILITY_FULL=1``: 200 clients for 30 s).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

from fastapi_dbpool import Database
from fastapi_dbpool.ops.startup_check import check_budget
from tests.backends import ROOT
from tests.conftest import make_settings
from tests.pgcluster import PgCluster
from tests.pgstat import app_sessions
from tests.reliability.conftest import base_env, scaled
from tests.reliability.ledger import Load, seed_users
from tests.servers import free_port

pytestmark = [pytest.mark.postgres_only, pytest.mark.slow]

WORKERS = 4
POOL_SIZE = 5


@contextmanager
def make_run(env: dict[str, str], workers: int, log: Path) -> Iterator[str]:
    """``make run WORKERS=workers`` on a free port until the block ends; yield its URL."""
    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["make", "--no-print-directory", "run", f"WORKERS={workers}", f"PORT={port}"],
            cwd=ROOT,
            env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: make, uvicorn and workers
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while log.read_text(errors="replace").count("Application startup complete") < workers:
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        yield url
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


async def test_four_workers_stay_within_the_budget(
    pg_cluster: PgCluster, app_database: str, tmp_path: Path
) -> None:
    clients = int(scaled(40, 200))
    seconds = scaled(6, 30)
    # Waits for a connection are expected at 200 clients on 4 x 5 connections; a
    # generous pool timeout keeps them waits, not 503s.
    env = base_env(app_database, DB_POOL_SIZE=str(POOL_SIZE), DB_POOL_TIMEOUT="20")
    settings = make_settings(app_database, pool_size=POOL_SIZE, max_overflow=0)
    async with Database(settings) as database:
        budget = await check_budget(database, workers=WORKERS)
    assert budget is not None and budget.fits, budget
    samples: list[int] = []
    log = tmp_path / "make-run.log"
    with make_run(env, WORKERS, log) as url:
        user_ids = await asyncio.to_thread(seed_users, url, 20)
        load = Load(url, user_ids, clients=clients, timeout=60)
        run = asyncio.create_task(load.run(seconds=seconds))
        while not run.done():
            samples.append(len(await asyncio.to_thread(app_sessions, app_database)))
            await asyncio.wait([run], timeout=0.2)  # five samples a second
        ledger = run.result()
    server_log = log.read_text(errors="replace")
    report = ledger.summary(f"{WORKERS} workers, {clients} clients: ") + (
        f"; server connections max {max(samples)} (budget {budget.needed}: "
        f"{budget.describe()}), {len(samples)} samples"
    )
    print("\n" + report)
    assert f"--workers {WORKERS}" in server_log, server_log[:2000]
    assert server_log.count("Application startup complete") == WORKERS, server_log[-3000:]
    assert ledger.entries and all(e.ok for e in ledger.entries), report
    assert max(samples) <= budget.needed, report
    assert "InheritedAcrossFork" not in server_log and "Traceback" not in server_log, server_log[
        -3000:
    ]
