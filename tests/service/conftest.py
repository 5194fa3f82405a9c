"""Service-test fixtures: the client records every status it sees (see statuses.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import _lifespan_client
from tests.service.statuses import record_statuses

LAST = "test_every_observed_status_is_declared"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the status check after every other test, when all statuses are recorded."""
    last = [item for item in items if getattr(item, "originalname", None) == LAST]
    for item in last:
        items.remove(item)
    items.extend(last)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The root client, recording every response's status for the OpenAPI check."""
    async for client in _lifespan_client(app):
        record_statuses(client, app.openapi())
        yield client
