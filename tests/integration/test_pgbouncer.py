"""PgBouncer in front of PostgreSQL: detected, identified, and its pitfalls reported."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fastapi_dbpool import Database, DatabaseSettings
from fastapi_dbpool.cli.app import app
from fastapi_dbpool.ops.budget import inspect_server
from tests.pgbouncer import pgbouncer_version, through_pgbouncer

pytestmark = pytest.mark.postgres_only

ENV = {
    "DB_POOL_SIZE": "2",
    "DB_STATEMENT_TIMEOUT_MS": "0",
    "DB_CONNECT_TIMEOUT": "3",
    "WEB_CONCURRENCY": "1",
    "COLUMNS": "200",
}


def doctor_json(url: str, **env: str) -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(app, ["doctor", "--json"], env=ENV | {"DATABASE_URL": url} | env)
    return result.exit_code, json.loads(result.stdout)


def codes(report: dict[str, Any]) -> dict[str, str]:
    return {f["code"]: f["level"] for f in report["findings"]}


def test_pgbouncer_identified_through_its_admin_console(database_url: str, backend: str) -> None:
    with through_pgbouncer(database_url, pool_mode="transaction", admin_users="postgres") as url:
        exit_code, report = doctor_json(url)
    pooler = report["server"]["pooler"]
    assert pooler["product"] == "PgBouncer"
    assert pooler["version"] == pgbouncer_version()
    assert pooler["pool_mode"] == "transaction"
    assert pooler["max_client_conn"] == 200
    assert any("backend pid differs" in e for e in pooler["evidence"])
    assert any("admin console answered" in e for e in pooler["evidence"])
    # The server's facts are still those of PostgreSQL behind it.
    assert report["server"]["product"] == "PostgreSQL"
    assert report["budget"] is None  # max_connections bounds PgBouncer, not the app
    found = codes(report)
    assert found["behind_pooler"] == "info"
    assert found["pgbouncer_prepared_statements"] == "warning"  # 1.18 has no support
    assert exit_code == 1


def test_pgbouncer_detected_without_admin_rights(database_url: str, backend: str) -> None:
    with through_pgbouncer(database_url, pool_mode="session") as url:
        exit_code, report = doctor_json(url)
        result = CliRunner().invoke(app, ["doctor"], env=ENV | {"DATABASE_URL": url})
    pooler = report["server"]["pooler"]
    assert pooler["product"] == "PgBouncer"
    assert pooler["pool_mode"] is None
    assert any("'not allowed'" in e for e in pooler["evidence"])
    assert codes(report)["pgbouncer_pool_mode_unknown"] == "info"
    assert "pgbouncer_prepared_statements" not in codes(report)
    assert exit_code == 1  # statement timeout off
    assert re.search(r"PgBouncer in front\s+│ yes: PgBouncer", result.stdout)


def test_direct_connection_is_not_mistaken_for_a_pooler(database_url: str, backend: str) -> None:
    _, report = doctor_json(database_url, DB_STATEMENT_TIMEOUT_MS="5000")
    assert report["server"]["pooler"] is None
    assert report["server"]["server_pid_differs"] is False
    assert "behind_pooler" not in codes(report)


def test_statement_timeout_rejected_by_pgbouncer_is_an_error(
    database_url: str, backend: str
) -> None:
    with through_pgbouncer(database_url) as url:
        exit_code, report = doctor_json(url, DB_STATEMENT_TIMEOUT_MS="1000")
    assert exit_code == 2
    (finding,) = report["findings"]
    assert finding["code"] == "startup_parameter_rejected"
    assert finding["setting"] == "DB_STATEMENT_TIMEOUT_MS"
    assert "unsupported startup parameter: statement_timeout" in finding["message"]


def test_repeated_checks_through_a_transaction_pool(database_url: str, backend: str) -> None:
    # PgBouncer hands the next client the same server connection. asyncpg names its
    # prepared statements from a per-process counter, so a second process (here: the
    # console script run twice) would collide with the statements the first one left.
    script = Path(sys.executable).parent / "dbpool"
    with through_pgbouncer(database_url, pool_mode="transaction", admin_users="postgres") as url:
        for _ in range(2):
            result = subprocess.run(
                [str(script), "doctor", "--json"],
                env=dict(os.environ, **ENV, DATABASE_URL=url),
                capture_output=True,
                text=True,
                timeout=60,
            )
            report = json.loads(result.stdout)
            assert report["server"] is not None, report["findings"]
            assert report["server"]["pooler"]["pool_mode"] == "transaction"


async def test_startup_check_behind_pgbouncer_logs_no_budget_warning(
    database_url: str,
    backend: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG, logger="fastapi_dbpool")
    monkeypatch.setenv("WEB_CONCURRENCY", "500")  # would never fit max_connections
    with through_pgbouncer(database_url) as url:
        database = Database(DatabaseSettings(url=url, pool_size=10))
        facts = await inspect_server(database)
        assert facts.pooler is not None and facts.server_pid_differs
        async with database:
            assert database._budget_check is not None
            await asyncio.wait_for(asyncio.shield(database._budget_check), timeout=15)
    records = [r for r in caplog.records if r.getMessage().startswith("connection budget")]
    assert [r.levelno for r in records] == [logging.DEBUG]
    assert "pooler is in front" in records[0].getMessage()
