"""The /users contract on both databases, through the app with its lifespan."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime

import httpx
import pytest


async def create(
    client: httpx.AsyncClient, name: str = "Ada", email: str = "ada@example.com"
) -> dict:
    response = await client.post("/users", json={"name": name, "email": email})
    assert response.status_code == 201, response.text
    return response.json()


async def test_create_and_read(client: httpx.AsyncClient) -> None:
    user = await create(client, email="Ada.Lovelace@Example.COM")
    assert user["email"] == "ada.lovelace@example.com"
    assert set(user) == {"id", "name", "email", "created_at"}
    created = datetime.fromisoformat(user["created_at"])
    assert created.utcoffset() is not None and created.utcoffset().total_seconds() == 0
    assert user["created_at"].endswith("+00:00")
    response = await client.get(f"/users/{user['id']}")
    assert response.status_code == 200
    assert response.json() == user


async def test_email_collides_case_insensitively(client: httpx.AsyncClient) -> None:
    await create(client, email="a@x.com")
    response = await client.post("/users", json={"name": "B", "email": "A@X.com"})
    assert response.status_code == 409
    assert (await client.get("/users")).json().__len__() == 1


@pytest.mark.parametrize(
    "body",
    [
        {"name": "", "email": "a@x.com"},
        {"name": "x" * 201, "email": "a@x.com"},
        {"name": "ok", "email": "not-an-email"},
        {"name": "ok", "email": "a" * 250 + "@x.com"},
        {"name": "nul\x00", "email": "a@x.com"},
        {"name": "ok", "email": "a\x00@x.com"},
        {"name": "ok"},
        {"email": "a@x.com"},
        {"name": 5, "email": "a@x.com"},
        {"name": "ok", "email": "a@x.com", "id": 7},
        {"name": "ok", "email": "a@x.com", "created_at": "2020-01-01T00:00:00Z"},
        {"name": "ok", "email": "a@x.com", "role": "admin"},
        [],
        "text",
    ],
)
async def test_invalid_create_is_422_and_changes_nothing(
    client: httpx.AsyncClient, body: object
) -> None:
    response = await client.post("/users", json=body)
    assert response.status_code == 422, response.text
    assert (await client.get("/users")).json() == []


async def test_malformed_json_is_4xx(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/users", content=b'{"name": "broken", ', headers={"content-type": "application/json"}
    )
    assert response.status_code in (400, 422)


async def test_lone_surrogate_is_4xx(client: httpx.AsyncClient) -> None:
    body = b'{"name": "\\ud800", "email": "s@x.com"}'
    response = await client.post(
        "/users", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code in (400, 422)
    assert (await client.get("/users")).json() == []


async def test_body_too_large_is_413(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/users",
        content=b'{"name": "' + b"x" * 400_000 + b'"}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json()["code"] == "request_entity_too_large"
    assert (await client.get("/users")).json() == []


async def test_chunked_body_too_large_is_413(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"name": "'
        for _ in range(40):
            yield b"x" * 10_000  # 400 kB in all, announced by no Content-Length
        yield b'", "email": "big@example.com"}'

    response = await client.post(
        "/users", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json()["code"] == "request_entity_too_large"
    assert (await client.get("/users")).json() == []


async def test_chunked_body_within_the_limit_is_served(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"name": "Chunked", '
        yield b'"email": "chunked@example.com"}'

    response = await client.post(
        "/users", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    "path",
    ["/users/0", "/users/-1", "/users/abc", "/users/99999999999999999999", "/users/2147483648"],
)
async def test_bad_ids_are_4xx(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code in (404, 422)


async def test_missing_user_is_404(client: httpx.AsyncClient) -> None:
    assert (await client.get("/users/2147483647")).status_code == 404
    assert (await client.patch("/users/2147483647", json={"name": "x"})).status_code == 404
    assert (await client.delete("/users/2147483647")).status_code == 404


async def test_list_paginates(client: httpx.AsyncClient) -> None:
    ids = [(await create(client, f"u{i}", f"u{i}@x.com"))["id"] for i in range(5)]
    page = (await client.get("/users?limit=2&offset=1")).json()
    assert [u["id"] for u in page] == ids[1:3]
    assert len((await client.get("/users")).json()) == 5
    for query in ("limit=0", "limit=101", "limit=-1", "offset=-1", "limit=x"):
        assert (await client.get(f"/users?{query}")).status_code == 422


async def test_patch(client: httpx.AsyncClient) -> None:
    a = await create(client, "A", "a@x.com")
    b = await create(client, "B", "b@x.com")
    assert (await client.patch(f"/users/{b['id']}", json={"email": "A@x.com"})).status_code == 409
    same = await client.patch(f"/users/{b['id']}", json={"email": "b@x.com"})
    assert same.status_code == 200
    renamed = await client.patch(f"/users/{b['id']}", json={"name": "Bee"})
    assert renamed.status_code == 200 and renamed.json()["name"] == "Bee"
    for body in ({}, {"name": None}, {"id": 3}, {"created_at": "x"}, {"name": ""}):
        assert (await client.patch(f"/users/{a['id']}", json=body)).status_code == 422
    assert (await client.get(f"/users/{a['id']}")).json() == a


async def test_delete_cascades_to_items(client: httpx.AsyncClient) -> None:
    user = await create(client)
    item = (await client.post("/items", json={"title": "t", "owner_id": user["id"]})).json()
    assert (await client.delete(f"/users/{user['id']}")).status_code == 204
    assert (await client.get(f"/users/{user['id']}")).status_code == 404
    assert (await client.get(f"/items/{item['id']}")).status_code == 404


async def test_concurrent_duplicate_creates_one_wins(client: httpx.AsyncClient) -> None:
    responses = await asyncio.gather(
        *(client.post("/users", json={"name": "R", "email": "race@x.com"}) for _ in range(10))
    )
    codes = sorted(r.status_code for r in responses)
    assert codes == [201] + [409] * 9
