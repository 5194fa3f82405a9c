"""The no-answer deadline: which setting bounds a statement that gets no answer at all."""

from __future__ import annotations

import pytest

from fastapi_dbpool import DatabaseSettings
from fastapi_dbpool.errors import classify
from fastapi_dbpool.postgres.no_answer import (
    command_timeout,
    libpq_no_answer_options,
    no_answer_error,
)
from fastapi_dbpool.postgres.options import connect_args

URL = "postgresql://u@h/db"


@pytest.mark.parametrize(
    ("statement_timeout_ms", "no_answer_timeout_s", "deadline"),
    [
        (0, None, 30.0),  # the defaults: bounded, never TCP's 15 minutes
        (0, 2.0, 2.0),
        (0, 0.0, None),  # turned off
        (1500, None, 2.5),  # the server cancels first; the client waits 1 s more
        (1500, 0.0, 2.5),
        (1500, 60.0, 2.5),
    ],
)
def test_deadline_of_a_statement_without_answer(
    statement_timeout_ms: int, no_answer_timeout_s: float | None, deadline: float | None
) -> None:
    given = {} if no_answer_timeout_s is None else {"no_answer_timeout_s": no_answer_timeout_s}
    settings = DatabaseSettings(url=URL, statement_timeout_ms=statement_timeout_ms, **given)
    assert command_timeout(settings) == deadline
    assert connect_args(settings, "app").get("command_timeout") == deadline


def test_no_answer_is_a_503_with_retry_after_that_names_the_setting() -> None:
    error = no_answer_error(DatabaseSettings(url=URL, no_answer_timeout_s=2))
    failure = classify(error)
    assert failure is not None and failure.status == 503 and failure.retry_after
    assert "DB_NO_ANSWER_TIMEOUT_S" in str(error) and "2 s" in str(error)


def test_sync_connections_get_tcp_deadlines_from_the_same_setting() -> None:
    options = libpq_no_answer_options(DatabaseSettings(url=URL, no_answer_timeout_s=30))
    assert options["tcp_user_timeout"] == 30_000
    # Keepalives give up within the deadline: idle + interval x count.
    idle, interval, count = (
        options["keepalives_idle"],
        options["keepalives_interval"],
        options["keepalives_count"],
    )
    assert options["keepalives"] == 1 and idle + interval * count <= 30
    assert libpq_no_answer_options(DatabaseSettings(url=URL, no_answer_timeout_s=0)) == {}
    with_statement_timeout = DatabaseSettings(url=URL, statement_timeout_ms=1500)
    assert libpq_no_answer_options(with_statement_timeout)["tcp_user_timeout"] == 2500
