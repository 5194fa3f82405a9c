"""Log formatting: structured fields, JSON lines, and no password ever written."""

from __future__ import annotations

import io
import json
import logging

import pytest

from fastapi_dbpool import configure_logging
from fastapi_dbpool.observe.logs import JsonFormatter, TextFormatter, redact_secrets

CANARY = "Canary-Pw-8812"


@pytest.fixture
def logger():
    logger = logging.getLogger("fastapi_dbpool")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield logger
    logger.handlers[:], logger.level, logger.propagate = saved


@pytest.mark.parametrize(
    "text",
    [
        f"postgresql://app:{CANARY}@db.internal:5432/prod",
        f"postgresql+asyncpg://app:{CANARY}@10.0.0.7/prod?ssl=require",
        f"connect to 'postgres://u:{CANARY}@h/d' failed",
        f"password={CANARY} host=db",
        f"PASSWORD: '{CANARY}'",
        f'{{"password": "{CANARY}"}}',
        f"token={CANARY}",
    ],
)
def test_redact_secrets(text: str) -> None:
    redacted = redact_secrets(text)
    assert CANARY not in redacted
    assert "***" in redacted


def test_redact_keeps_what_is_safe() -> None:
    text = "postgresql://app@db:5432/prod and https://example.com/a:b@c is odd"
    assert redact_secrets("postgresql://app@db:5432/prod") == "postgresql://app@db:5432/prod"
    assert "example.com" in redact_secrets(text)


def test_json_lines_carry_the_structured_fields(logger: logging.Logger) -> None:
    stream = io.StringIO()
    configure_logging(as_json=True, stream=stream)
    logger.warning("pool busy", extra={"pool": "primary", "event": "pool_timeout", "waited_s": 5.0})
    record = json.loads(stream.getvalue())
    assert record["message"] == "pool busy"
    assert record["level"] == "WARNING" and record["logger"] == "fastapi_dbpool"
    assert (record["pool"], record["event"], record["waited_s"]) == ("primary", "pool_timeout", 5.0)
    assert record["time"].endswith("+00:00")


def test_exceptions_are_logged_without_passwords(logger: logging.Logger) -> None:
    stream = io.StringIO()
    configure_logging(as_json=True, stream=stream)
    try:
        raise ConnectionError(f"could not connect to postgresql://app:{CANARY}@db/prod")
    except ConnectionError:
        logger.exception("connect failed", extra={"event": "connect_failed"})
    record = json.loads(stream.getvalue())
    assert record["exc_type"] == "ConnectionError"
    assert "Traceback" in record["exception"]
    assert CANARY not in stream.getvalue()


def test_text_format_appends_fields(logger: logging.Logger) -> None:
    stream = io.StringIO()
    configure_logging(stream=stream)
    logger.info(f"started on postgresql://a:{CANARY}@h/d", extra={"pool": "primary"})
    line = stream.getvalue().strip()
    assert line.endswith("pool=primary")
    assert "INFO fastapi_dbpool: started on postgresql://a:***@h/d" in line
    assert CANARY not in line


def test_configure_twice_writes_once(logger: logging.Logger) -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging(as_json=True, stream=first)
    configure_logging(as_json=True, stream=second, level="WARNING")
    logger.info("not written: below WARNING")
    logger.warning("once")
    assert first.getvalue() == ""
    assert [json.loads(line)["message"] for line in second.getvalue().splitlines()] == ["once"]
    assert logger.propagate is False


def test_formatters_are_usable_on_their_own() -> None:
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "a %s", ("b",), None)
    record.pool = "replica"
    assert json.loads(JsonFormatter().format(record))["pool"] == "replica"
    assert TextFormatter().format(record).endswith("a b pool=replica")
