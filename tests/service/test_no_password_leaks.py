"""A canary password in DATABASE_URL appears in no response, metric, page, log line or CLI output.

PostgreSQL only: a SQLite URL has no password. The test server trusts local
connections, so the canary is accepted and ignored by the server, and the app runs
normally with it in its settings.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import make_settings
from tests.servers import free_port

pytestmark = pytest.mark.postgres_only

CANARY = "Canary-Pw-7f3a9"


class RawFormatter(logging.Formatter):
    """Every attribute of a record and its traceback, with no redaction: the library's
    own formatters redact URLs, which would hide a leak from this test."""

    def format(self, record: logging.LogRecord) -> str:
        fields = dict(vars(record), message=record.getMessage())
        if record.exc_info:
            fields["traceback"] = self.formatException(record.exc_info)
        return json.dumps(fields, default=repr)


@pytest.fixture
def every_log_line() -> Iterator[io.StringIO]:
    """Every record of every logger, at DEBUG, unredacted."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(RawFormatter())
    root = logging.getLogger()
    saved_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield stream
    root.removeHandler(handler)
    root.setLevel(saved_level)


async def exercise(url: str, *, database_up: bool) -> list[httpx.Response]:
    from users_api.main import create_app

    app = create_app(make_settings(url, pool_size=2, pool_timeout=1, connect_timeout=1))
    responses = []
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            calls = [
                ("POST", "/users", {"name": "Ada", "email": "ada@example.com"}),
                ("POST", "/users", {"name": "Ada", "email": "ada@example.com"}),
                ("POST", "/users", {"name": "", "email": "nope"}),
                ("GET", "/users/1", None),
                ("GET", "/users/999", None),
                ("GET", "/users", None),
                ("POST", "/items", {"title": "t", "owner_id": 1}),
                ("GET", "/health/live", None),
                ("GET", "/health/ready", None),
                ("GET", "/metrics", None),
                ("GET", "/pool/stats", None),
                ("GET", "/pool", None),
                ("GET", "/openapi.json", None),
            ]
            for method, path, body in calls:
                responses.append(await client.request(method, path, json=body))
    statuses = [r.status_code for r in responses]
    if database_up:
        assert statuses[:2] == [201, 409], statuses
    else:
        assert statuses[0] == 503 and statuses[8] == 503, statuses
    return responses


def run_cli(url: str) -> str:
    """``dbpool doctor`` (table and JSON) on *url*; their combined output."""
    from typer.testing import CliRunner

    from fastapi_dbpool.cli.app import app as cli

    outputs = []
    for args in (["doctor"], ["doctor", "--json"]):
        result = CliRunner().invoke(
            cli, args, env={"DATABASE_URL": url, "DB_CONNECT_TIMEOUT": "2", "COLUMNS": "200"}
        )
        assert result.exit_code in (0, 1, 2), result.output
        outputs.append(result.output)
    return "\n".join(outputs)


def assert_no_canary(responses: list[httpx.Response], logs: str) -> None:
    for response in responses:
        where = f"{response.request.method} {response.request.url.path}"
        assert CANARY not in response.text, where
        assert CANARY not in str(response.headers), where
    assert logs, "nothing was logged: the check would prove nothing"
    assert CANARY not in logs


def with_canary(url: str, placement: str) -> str:
    """*url* with the canary password in its userinfo, or as ``?password=`` (libpq's spelling)."""
    parsed = make_url(url)
    if placement == "query":
        parsed = parsed.update_query_dict({"password": CANARY})
    else:
        parsed = parsed.set(password=CANARY)
    return parsed.render_as_string(hide_password=False)


@pytest.mark.parametrize("placement", ["userinfo", "query"])
async def test_canary_with_the_database_up(
    backend: str, database_url: str, every_log_line: io.StringIO, placement: str
) -> None:
    url = with_canary(database_url, placement)
    responses = await exercise(url, database_up=True)
    cli_output = await asyncio.to_thread(run_cli, url)  # the CLI runs its own loop
    assert "PostgreSQL" in cli_output  # doctor really talked to the server
    assert CANARY not in cli_output
    assert_no_canary(responses, every_log_line.getvalue())


@pytest.mark.parametrize("placement", ["userinfo", "query"])
async def test_canary_with_the_database_down(
    backend: str, every_log_line: io.StringIO, placement: str
) -> None:
    url = with_canary(f"postgresql://app@127.0.0.1:{free_port()}/app", placement)
    responses = await exercise(url, database_up=False)
    cli_output = await asyncio.to_thread(
        run_cli, url
    )  # unreachable: doctor reports the error, not the URL's secret
    assert CANARY not in cli_output
    logs = every_log_line.getvalue()
    assert "probe_failed" in logs and "db_error" in logs
    assert_no_canary(responses, logs)
