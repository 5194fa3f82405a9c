"""Property: a request's writes are committed exactly when the handler did not fail."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from starlette.testclient import TestClient

from fastapi_dbpool import DatabaseSettings
from tests.integration.sessionapp import build_app, create_tables, drop_tables
from tests.strategies import handler_outcomes


@pytest.fixture
def tables(settings: DatabaseSettings) -> Iterator[None]:
    create_tables(settings)
    yield
    drop_tables(settings)


def test_committed_iff_handler_succeeded(settings: DatabaseSettings, tables: None) -> None:
    app = build_app(settings, [])
    with TestClient(app, raise_server_exceptions=False) as client:

        @hypothesis_settings(max_examples=40, deadline=None)
        @given(outcome=handler_outcomes())
        def check(outcome: tuple[str, int]) -> None:
            kind, status = outcome
            before = client.get("/parents/count").json()
            response = client.post(
                "/outcome", params={"kind": kind, "status": status}, follow_redirects=False
            )
            assert response.status_code == status
            after = client.get("/parents/count").json()
            assert after - before == (1 if kind == "return" else 0)

        check()
        assert app.state.fastapi_dbpool.pool_snapshot().checked_out == 0
