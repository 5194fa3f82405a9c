"""GET /users/{id}/sync: a ``def`` endpoint on a sync session, same contract as GET /users/{id}."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from fastapi_dbpool import Database


async def create(client: httpx.AsyncClient, email: str) -> dict:
    response = await client.post("/users", json={"name": "Ada", "email": email})
    assert response.status_code == 201, response.text
    return response.json()


async def test_sync_read_answers_like_the_async_read(
    client: httpx.AsyncClient, database: Database
) -> None:
    user = await create(client, "ada@example.com")
    sync = await client.get(f"/users/{user['id']}/sync")
    assert sync.status_code == 200, sync.text
    assert sync.json() == user == (await client.get(f"/users/{user['id']}")).json()
    assert database.sync.pool_snapshot().checkouts_total == 1


async def test_sync_read_sees_a_change_committed_by_the_async_pool(
    client: httpx.AsyncClient,
) -> None:
    user = await create(client, "ada@example.com")
    await client.patch(f"/users/{user['id']}", json={"name": "Ada L."})
    assert (await client.get(f"/users/{user['id']}/sync")).json()["name"] == "Ada L."


async def test_sync_read_of_a_missing_user_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/users/424242/sync")
    assert response.status_code == 404
    assert response.json() == (await client.get("/users/424242")).json()


@pytest.mark.parametrize("user_id", ["0", "-1", "abc", "2147483648", "1.5"])
async def test_sync_read_of_an_invalid_id_is_422(client: httpx.AsyncClient, user_id: str) -> None:
    assert (await client.get(f"/users/{user_id}/sync")).status_code == 422


async def test_concurrent_sync_reads_share_the_pool(
    client: httpx.AsyncClient, database: Database
) -> None:
    user = await create(client, "ada@example.com")
    responses = await asyncio.gather(*(client.get(f"/users/{user['id']}/sync") for _ in range(40)))
    assert {r.status_code for r in responses} == {200}
    snapshot = database.sync.pool_snapshot()
    assert snapshot.checkouts_total == 40
    assert snapshot.connects_total <= snapshot.size
