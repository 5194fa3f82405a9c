"""The OpenAPI schema declares every status each route answers, with the error body's schema."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from tests.service.statuses import OBSERVED, undeclared

ERROR_BODY = "#/components/schemas/ErrorBody"


def _responses(app: FastAPI) -> dict[tuple[str, str], dict]:
    return {
        (method.upper(), path): operation["responses"]
        for path, operations in app.openapi()["paths"].items()
        for method, operation in operations.items()
        if not path.startswith("/health")
    }


def _schema_ref(response: dict) -> str | None:
    return response.get("content", {}).get("application/json", {}).get("schema", {}).get("$ref")


async def test_error_statuses_are_declared_with_the_error_body(app: FastAPI) -> None:
    for (method, path), responses in _responses(app).items():
        where = f"{method} {path}"
        # Every route validates its input and touches the database.
        for status in ("422", "503"):
            assert _schema_ref(responses[status]) == ERROR_BODY, (where, status)
        assert "Retry-After" in responses["503"]["headers"], where
        if "{" in path:
            assert "404" in responses, where
        if method in ("POST", "PATCH") and not path.endswith("/process"):
            for status in ("400", "413"):
                assert _schema_ref(responses[status]) == ERROR_BODY, (where, status)


async def test_every_observed_status_is_declared(app: FastAPI, client: httpx.AsyncClient) -> None:
    """Runs last among the service tests (conftest.py): checks what all of them saw."""
    # Its own sample, so that it proves something when run alone.
    user = (await client.post("/users", json={"name": "A", "email": "a@x.com"})).json()
    await client.post("/users", json={"name": "A", "email": "a@x.com"})  # 409
    await client.get("/users/2147483647")  # 404
    await client.patch(f"/users/{user['id']}", json={})  # 422
    await client.post(
        "/users", content=b"x" * 300_000, headers={"content-type": "application/json"}
    )
    await client.post("/items/2147483647/process")  # 404
    seen = {status for statuses in OBSERVED.values() for status in statuses}
    assert {404, 409, 413, 422} <= seen, seen
    assert undeclared(app.openapi()) == {}


async def test_405_allows_every_method_of_the_path(client: httpx.AsyncClient) -> None:
    response = await client.put("/users/1", json={})
    assert response.status_code == 405
    assert set(response.headers["allow"].split(", ")) == {"GET", "PATCH", "DELETE"}
    assert response.json()["code"] == "method_not_allowed"


async def test_links_name_existing_operations(app: FastAPI) -> None:
    schema = app.openapi()
    operations = {
        operation["operationId"] for path in schema["paths"].values() for operation in path.values()
    }
    links = [
        link
        for path in schema["paths"].values()
        for operation in path.values()
        for response in operation["responses"].values()
        for link in response.get("links", {}).values()
    ]
    assert len(links) == 7  # user -> get, patch, delete; item -> get, patch, delete, process
    assert {link["operationId"] for link in links} <= operations
