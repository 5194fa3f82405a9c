"""``dbpool doctor`` through its runner, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from fastapi_dbpool.cli.app import app
from tests.backends import admin_execute, libpq_url, migrate, postgres_database
from tests.servers import free_port

CANARY = "CANARY-xyz-41d9"

# Settings that give no finding on this test machine's database: a small pool, a
# statement timeout, pre-ping on. Findings are then added one setting at a time.
CLEAN = {
    "DB_POOL_SIZE": "2",
    "DB_MAX_OVERFLOW": "0",
    "DB_STATEMENT_TIMEOUT_MS": "5000",
    "DB_POOL_PRE_PING": "true",
    "DB_CONNECT_TIMEOUT": "3",
    "WEB_CONCURRENCY": "1",
    "COLUMNS": "200",  # rich wraps at the terminal width; keep whole sentences on a line
}


def doctor(database_url: str, *args: str, **env: str) -> Any:
    result = CliRunner().invoke(
        app, ["doctor", *args], env=CLEAN | {"DATABASE_URL": database_url} | env
    )
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def doctor_json(database_url: str, *args: str, **env: str) -> tuple[int, dict[str, Any]]:
    result = doctor(database_url, "--json", *args, **env)
    return result.exit_code, json.loads(result.stdout)


def codes(report: dict[str, Any], level: str | None = None) -> set[str]:
    return {f["code"] for f in report["findings"] if level is None or f["level"] == level}


def test_doctor_all_well(database_url: str, backend: str) -> None:
    result = doctor(database_url, "--db-cores", "2")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "status: ok (exit code 0)" in out
    assert "DB_POOL_SIZE" in out and "recommended pool size: DB_POOL_SIZE=" in out
    if backend == "sqlite":
        assert "SQLite 3." in out
        assert "journal_mode" in out and "wal" in out
        assert "busy_timeout" in out and "5000 ms" in out
        assert "foreign_keys" in out
    else:
        assert "PostgreSQL 1" in out
        for item in ("max_connections", "reserved", "in use", "idle_session_timeout"):
            assert item in out
        assert "PgBouncer in front" in out
        assert "connection budget" in out and "fits: 1 worker(s) x (2 pool + 0 overflow" in out


def test_doctor_json_reports_facts_budget_and_recommendation(
    database_url: str, backend: str
) -> None:
    exit_code, report = doctor_json(
        database_url, "--workers", "2", "--db-cores", "3", "--spindles", "0"
    )
    if backend == "sqlite":  # two processes writing one SQLite file deserve a warning
        assert (exit_code, report["status"], codes(report)) == (1, "warnings", {"sqlite_workers"})
    else:
        assert (exit_code, report["status"]) == (0, "ok"), report["findings"]
    assert report["exit_code"] == exit_code
    assert report["workers"] == 2
    assert report["settings"]["DB_POOL_SIZE"] == 2
    recommendation = report["recommendation"]
    # HikariCP: 3 cores x 2 + 0 spindles = 6, over 2 workers = 3 each
    assert recommendation["database_connections"] == 6
    assert recommendation["pool_size"] == 3
    assert any("given with --db-cores" in r for r in recommendation["reasons"])
    server = report["server"]
    if backend == "sqlite":
        assert server["journal_mode"] == "wal" and server["foreign_keys"] is True
        assert report["budget"] is None
        return
    with psycopg.connect(libpq_url(database_url)) as conn:
        max_connections = int(conn.execute("SHOW max_connections").fetchone()[0])
    assert server["max_connections"] == max_connections
    assert server["pooler"] is None
    budget = report["budget"]
    assert budget["per_worker"] == 3 and budget["needed"] == 6 and budget["fits"] is True
    assert budget["max_connections"] == max_connections


def test_doctor_warns_about_conflicting_settings(database_url: str, backend: str) -> None:
    if backend == "sqlite":
        exit_code, report = doctor_json(database_url, DB_MAX_OVERFLOW="4", WEB_CONCURRENCY="2")
        assert exit_code == 1
        assert codes(report, "warning") == {"sqlite_overflow", "sqlite_workers"}
        return
    exit_code, report = doctor_json(
        database_url, DB_POOL_PRE_PING="false", DB_STATEMENT_TIMEOUT_MS="0"
    )
    assert exit_code == 1
    assert codes(report, "warning") == {"pre_ping_off", "statement_timeout_off"}
    settings = {f["code"]: f["setting"] for f in report["findings"]}
    assert settings["pre_ping_off"] == "DB_POOL_PRE_PING"
    assert settings["statement_timeout_off"] == "DB_STATEMENT_TIMEOUT_MS"


@pytest.mark.postgres_only
def test_doctor_warns_when_the_pools_do_not_fit(database_url: str, backend: str) -> None:
    result = doctor(database_url, "--workers", "40", DB_POOL_SIZE="10")
    assert result.exit_code == 1
    assert "does not fit: 40 worker(s) x (10 pool + 0 overflow + 1 probe) = 440" in result.stdout
    assert "too many clients already" in result.stdout
    _, report = doctor_json(database_url, "--workers", "40", DB_POOL_SIZE="10")
    assert "budget_exceeded" in codes(report, "warning")
    assert report["budget"]["fits"] is False

    # The recommendation fits what is left.
    assert 40 * (report["recommendation"]["pool_size"] + 1) <= max(
        report["budget"]["available"], 40 * 2
    )


@pytest.mark.postgres_only
def test_doctor_compares_pool_recycle_with_idle_session_timeout(backend: str) -> None:
    with postgres_database("dbpool_doctor") as url:
        name = make_url(url).database
        admin_execute(f"ALTER DATABASE \"{name}\" SET idle_session_timeout = '30s'")
        exit_code, report = doctor_json(url, DB_POOL_RECYCLE="1800")
        assert exit_code == 1
        (finding,) = [f for f in report["findings"] if f["code"] == "recycle_after_idle_timeout"]
        assert finding["level"] == "warning" and finding["setting"] == "DB_POOL_RECYCLE"
        assert "closes them after 30 s idle" in finding["message"]
        assert report["server"]["idle_session_timeout_s"] == 30

        exit_code, report = doctor_json(url, DB_POOL_RECYCLE="-1", DB_POOL_PRE_PING="false")
        assert exit_code == 2  # dead connections reach requests: an error, not a warning
        assert "recycle_after_idle_timeout" in codes(report, "error")

        exit_code, report = doctor_json(url, DB_POOL_RECYCLE="20")
        assert exit_code == 0, report["findings"]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DB_POOL_SIZE", "lots"),
        ("DB_POOL_TIMEOUT", "-1"),
        ("DATABASE_URL", f"mysql://root:{CANARY}@db/app"),
        ("WEB_CONCURRENCY", "zero"),
    ],
)
def test_doctor_names_the_invalid_setting(variable: str, value: str) -> None:
    env = {"DATABASE_URL": "sqlite:///./unused.db", variable: value}
    result = CliRunner().invoke(app, ["doctor"], env=CLEAN | env)
    assert result.exit_code == 2
    assert variable in result.stdout
    assert "status: errors (exit code 2)" in result.stdout
    assert CANARY not in result.output
    json_result = CliRunner().invoke(app, ["doctor", "--json"], env=CLEAN | env)
    report = json.loads(json_result.stdout)
    assert report["findings"][0]["code"] == "invalid_settings"
    assert report["findings"][0]["setting"] == variable


def test_doctor_reports_an_unreachable_database(tmp_path: Path) -> None:
    url = f"postgresql://postgres:{CANARY}@127.0.0.1:{free_port()}/db"
    result = doctor(url, DB_CONNECT_TIMEOUT="2")
    assert result.exit_code == 2
    assert "cannot connect to postgresql+asyncpg://postgres:***@127.0.0.1" in result.stdout
    assert CANARY not in result.output
    # A SQLite file in a directory that does not exist cannot be opened either.
    missing_dir = tmp_path / "nowhere" / "app.db"
    _, report = doctor_json(f"sqlite:///{missing_dir}")
    assert report["server"]["sqlite_exists"] is False
    assert "sqlite_missing" in codes(report, "warning")


def test_doctor_does_not_create_a_missing_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    exit_code, report = doctor_json(f"sqlite:///{path}")
    assert exit_code == 1
    assert "sqlite_missing" in codes(report)
    assert not path.exists()
    migrate(f"sqlite+aiosqlite:///{path}")
    exit_code, report = doctor_json(f"sqlite:///{path}")
    assert exit_code == 0, report["findings"]


@pytest.mark.postgres_only
def test_doctor_never_prints_the_password(database_url: str, backend: str) -> None:
    # PostgreSQL's trust authentication ignores the password, so the canary connects.
    url = make_url(database_url).set(password=CANARY).render_as_string(hide_password=False)
    for args in ((), ("--json",)):
        result = doctor(url, *args, DB_POOL_PRE_PING="false")
        assert result.exit_code == 1
        assert "PostgreSQL" in result.stdout
        assert "postgres:***@" in result.stdout
        assert CANARY not in result.output


@pytest.mark.postgres_only
def test_doctor_counts_the_sync_pool_when_told(database_url: str, backend: str) -> None:
    args = ("--workers", "2", "--sync-endpoints")
    _, report = doctor_json(database_url, *args, DB_POOL_SIZE="3")
    # 2 workers x (2 pools x (3 + 0) + 1 probe) = 14.
    assert report["budget"]["pools"] == 2 and report["budget"]["needed"] == 14


_APP_MODULE = """
from fastapi import FastAPI
from sqlalchemy import text

from fastapi_dbpool import Database, SessionDep, SyncSessionDep

app = FastAPI()
Database().install(app)


@app.get("/sync")
def sync_one(session: SyncSessionDep) -> int:
    return int(session.scalar(text("SELECT 1")) or 0)
"""

_ASYNC_ROUTE = """

@app.get("/async")
async def async_one(session: SessionDep) -> int:
    return int(await session.scalar(text("SELECT 1")) or 0)
"""


@pytest.mark.parametrize("with_async", [False, True], ids=["sync-only", "both"])
def test_doctor_sees_the_pools_of_the_app(
    database_url: str,
    backend: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    with_async: bool,
) -> None:
    """``--app`` imports the app: its routes say which pools each worker opens."""
    module = f"doctor_app_{tmp_path.name.replace('-', '_')}_{int(with_async)}"
    (tmp_path / f"{module}.py").write_text(_APP_MODULE + (_ASYNC_ROUTE if with_async else ""))
    monkeypatch.chdir(tmp_path)
    _, report = doctor_json(database_url, "--app", f"{module}:app", "--workers", "2")
    assert report["pools"] == (["async", "sync"] if with_async else ["sync"])
    if backend == "postgresql":
        # 2 workers x (pools x (2 + 0) + 1 probe).
        pools = 2 if with_async else 1
        assert report["budget"]["pools"] == pools
        assert report["budget"]["needed"] == 2 * (pools * 2 + 1)


def test_doctor_app_must_have_a_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "doctor_bare_app.py").write_text("from fastapi import FastAPI\napp = FastAPI()\n")
    monkeypatch.chdir(tmp_path)
    exit_code, report = doctor_json("sqlite:///x.db", "--app", "doctor_bare_app:app")
    assert exit_code == 2
    assert "no Database installed" in report["findings"][0]["message"]


@pytest.mark.postgres_only
def test_doctor_counts_the_replica_pool_on_the_standby(database_url: str, backend: str) -> None:
    """DATABASE_REPLICA_URL: the standby's facts, and one pool per worker checked against it.

    The "standby" is the primary server itself here: what is under test is that the
    doctor reads it and does the replica's sum with its max_connections.
    """
    _, report = doctor_json(
        database_url, "--workers", "3", DB_POOL_SIZE="4", DATABASE_REPLICA_URL=database_url
    )
    replica = report["replica"]
    assert replica["server"]["max_connections"] == report["server"]["max_connections"]
    # 3 workers x (1 pool x (4 + 0) + 1 probe) = 15, on the standby.
    assert replica["budget"]["pools"] == 1 and replica["budget"]["needed"] == 15
    assert replica["budget"]["max_connections"] == replica["server"]["max_connections"]
    _, alone = doctor_json(database_url)
    assert alone["replica"] is None


@pytest.mark.postgres_only
def test_doctor_warns_when_the_replica_is_unreachable(database_url: str, backend: str) -> None:
    standby = f"postgresql://postgres:{CANARY}@127.0.0.1:{free_port()}/db"
    result = doctor(database_url, DATABASE_REPLICA_URL=standby, DB_CONNECT_TIMEOUT="2")
    assert "replica_unreachable" not in result.stdout  # codes are in --json only
    assert "replica: cannot connect to postgresql+asyncpg://postgres:***@127.0.0.1" in (
        result.stdout
    )
    assert CANARY not in result.output
    assert result.exit_code == 1
