"""``dbpool bench`` against the users_api served by a real uvicorn process."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from fastapi_dbpool import DatabaseSettings
from fastapi_dbpool.cli.app import app
from tests.backends import REQUIRE_SYSTEM_DEPS, skip_or_fail
from tests.servers import USERS_API, free_port, uvicorn_server

ENV = {"COLUMNS": "200"}


@pytest.fixture
def server(database_url: str) -> Iterator[str]:
    env = {"DATABASE_URL": database_url, "DB_POOL_SIZE": "5"}
    with uvicorn_server(USERS_API, env, access_log=False) as server:
        yield server.url


def bench(*args: str) -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(app, ["bench", *args, "--json"], env=ENV)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, json.loads(result.stdout)


def create_user(base: str, email: str) -> int:
    response = httpx.post(f"{base}/users", json={"name": "Bench", "email": email}, timeout=10)
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


@pytest.mark.slow
def test_bench_measures_a_read_endpoint(server: str) -> None:
    user_id = create_user(server, "bench@example.com")
    exit_code, summary = bench(server, "--path", f"/users/{user_id}", "-c", "4", "-d", "1")
    assert exit_code == 0
    assert summary["engine"] == "python"
    assert set(summary["statuses"]) == {"200"}
    assert summary["responses"] == summary["requests"] == summary["statuses"]["200"] > 10
    assert summary["failures"] == {} and summary["errors"] == 0
    assert summary["requests_per_second"] > 0
    latency = summary["latency_ms"]
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    assert 0.9 < summary["duration_s"] < 15

    table = CliRunner().invoke(
        app, ["bench", f"{server}/users/{user_id}", "-c", "2", "-d", "0.5"], env=ENV
    )
    assert table.exit_code == 0
    assert f"dbpool bench: GET {server}/users/{user_id}, 2 connections" in table.stdout
    for column in ("requests", "req/s", "p50", "p90", "p99", "max", "errors"):
        assert column in table.stdout
    assert re.search(r"│ 200\s+│\s+\d+ │ 100\.0% │", table.stdout)


@pytest.mark.slow
def test_bench_counts_answers_by_status(server: str, database_url: str) -> None:
    body = json.dumps({"name": "Once", "email": "once@example.com"})
    exit_code, summary = bench(
        server, "--path", "/users", "--method", "POST", "--body", body, "-c", "4", "-d", "1"
    )
    # The first POST creates the user; every other one collides with it.
    assert exit_code == 1
    assert summary["statuses"]["201"] == 1
    assert summary["statuses"]["409"] == summary["responses"] - 1 > 0
    assert summary["errors"] == summary["statuses"]["409"]
    engine = create_engine(DatabaseSettings(url=database_url).sync_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT count(*) FROM users WHERE email = 'once@example.com'"))
            assert rows.scalar() == 1
    finally:
        engine.dispose()

    exit_code, summary = bench(server, "--path", "/users/999999", "-c", "2", "-d", "0.5")
    assert exit_code == 1
    assert set(summary["statuses"]) == {"404"}


@pytest.mark.slow
def test_bench_with_wrk(server: str) -> None:
    if shutil.which("wrk") is None:
        skip_or_fail("wrk is not installed (apt-get install wrk)", required=REQUIRE_SYSTEM_DEPS)
    user_id = create_user(server, "wrk@example.com")
    exit_code, summary = bench(server, "--path", f"/users/{user_id}", "-c", "4", "-d", "1", "--wrk")
    assert exit_code == 0, summary
    assert summary["engine"] == "wrk"
    assert set(summary["statuses"]) == {"200"} and summary["statuses"]["200"] > 10
    assert summary["latency_ms"]["p50"] <= summary["latency_ms"]["p99"]
    body = json.dumps({"name": "W", "email": "w@example.com"})
    exit_code, summary = bench(
        server, "--path", "/users", "--method", "POST", "--body", body, "-d", "1", "--wrk"
    )
    assert exit_code == 1
    assert summary["statuses"]["201"] == 1 and summary["statuses"]["409"] > 0


def test_bench_against_nothing_exits_2() -> None:
    exit_code, summary = bench(f"http://127.0.0.1:{free_port()}", "-c", "2", "-d", "0.3")
    assert exit_code == 2
    assert summary["responses"] == 0
    assert summary["failures"]["connect: refused"] > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ftp://127.0.0.1/"], "is not an http:// or https:// URL"),
        (["http://127.0.0.1:1", "--body", "{not json"], "--body is not valid JSON"),
        (["http://127.0.0.1:1", "-H", "no colon"], "is not 'Name: value'"),
    ],
)
def test_bench_refuses_bad_options(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["bench", *args], env=ENV)
    assert result.exit_code == 2
    assert message in result.stderr
