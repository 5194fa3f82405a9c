"""The /users contract through the library's own pytest plugin, on both databases.

The users_api is tested here as an app built on the library tests itself: with the
plugin's fixtures (``dbpool_client``), a database the plugin creates for the run and
drops after it, and each test in a transaction rolled back at its end. The handlers
commit for real (``ConnectionDep``'s ``execute_committed``, ``ReadConnectionDep``,
``ReadSessionDep``): the next test still starts from empty tables, with no clean-up of
ours. After each test the plugin fails it if a unit of work or a connection was left.

``dbpool_server`` is parametrised, so the plugin's database is made on each backend:
a SQLite file, and a database on the PostgreSQL server of ``TEST_POSTGRES_URL`` (which
skips without a server, and fails under ``REQUIRE_POSTGRES=1``).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from fastapi_dbpool import DatabaseSettings
from tests.backends import ADMIN_URL, require_postgres
from tests.service.statuses import record_statuses


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def dbpool_server(request: pytest.FixtureRequest) -> str | None:
    """Where the plugin creates its database: a SQLite file, then PostgreSQL."""
    if request.param == "sqlite":
        return None
    require_postgres()
    return ADMIN_URL


@pytest.fixture(scope="session")
def dbpool_metadata() -> Any:
    """The users_api's tables, created by the plugin in its database."""
    from users_api.models import Base

    return Base.metadata


@pytest.fixture
def dbpool_app(dbpool_url: str) -> FastAPI:
    """The users_api on the plugin's database, with a small pool so that leaks show.

    Without its item workers: background work that uses the database while a test runs
    would share the test's connection with the requests (see docs/testing.md).
    """
    from users_api.main import create_app
    from users_api.settings import ItemSettings

    settings = DatabaseSettings(url=dbpool_url, pool_size=5, max_overflow=0, pool_timeout=5)
    return create_app(settings, item_settings=ItemSettings(workers=0))


@pytest.fixture
def client(dbpool_client: httpx.AsyncClient, dbpool_app: FastAPI) -> httpx.AsyncClient:
    """The plugin's client, recording statuses for the OpenAPI check (statuses.py)."""
    record_statuses(dbpool_client, dbpool_app.openapi())
    return dbpool_client


async def create(client: httpx.AsyncClient, name: str, email: str) -> dict[str, Any]:
    response = await client.post("/users", json={"name": name, "email": email})
    assert response.status_code == 201, response.text
    user: dict[str, Any] = response.json()
    return user


async def test_create_and_get(client: httpx.AsyncClient) -> None:
    user = await create(client, "Ada", "Ada@Example.com")
    assert user["email"] == "ada@example.com"
    response = await client.get(f"/users/{user['id']}")  # ReadConnectionDep
    assert response.status_code == 200 and response.json() == user
    assert (await client.get("/users")).json() == [user]  # ReadSessionDep


async def test_each_test_starts_empty(client: httpx.AsyncClient) -> None:
    # The previous test committed a user; its transaction was rolled back.
    assert (await client.get("/users")).json() == []
    # Its email is free again.
    await create(client, "Ada", "ada@example.com")


async def test_duplicate_email_is_409_and_keeps_the_first(client: httpx.AsyncClient) -> None:
    first = await create(client, "A", "a@x.com")
    response = await client.post("/users", json={"name": "B", "email": "A@X.com"})
    assert response.status_code == 409
    # The failed insert was undone to its savepoint; the first user and the test's
    # transaction are intact, and the next write works.
    assert (await client.get("/users")).json() == [first]
    await create(client, "C", "c@x.com")
    assert len((await client.get("/users")).json()) == 2


async def test_patch(client: httpx.AsyncClient) -> None:
    a = await create(client, "A", "a@x.com")
    b = await create(client, "B", "b@x.com")
    renamed = await client.patch(f"/users/{b['id']}", json={"name": "Bee"})
    assert renamed.status_code == 200 and renamed.json()["name"] == "Bee"
    assert (await client.patch(f"/users/{b['id']}", json={"email": "A@x.com"})).status_code == 409
    assert (await client.get(f"/users/{b['id']}")).json()["email"] == "b@x.com"
    assert (await client.get(f"/users/{a['id']}")).json() == a


async def test_delete(client: httpx.AsyncClient) -> None:
    user = await create(client, "A", "a@x.com")
    assert (await client.delete(f"/users/{user['id']}")).status_code == 204
    assert (await client.get(f"/users/{user['id']}")).status_code == 404
    assert (await client.delete(f"/users/{user['id']}")).status_code == 404


async def test_missing_user_is_404(client: httpx.AsyncClient) -> None:
    assert (await client.get("/users/2147483647")).status_code == 404
    assert (await client.patch("/users/2147483647", json={"name": "x"})).status_code == 404
    assert (await client.delete("/users/2147483647")).status_code == 404
