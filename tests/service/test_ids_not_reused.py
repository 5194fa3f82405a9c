"""Ids are never handed out twice, on both databases (SQLite: AUTOINCREMENT, issue 9)."""

from __future__ import annotations

import httpx


async def test_deleted_user_id_is_not_reused(client: httpx.AsyncClient) -> None:
    first = (await client.post("/users", json={"name": "A", "email": "a@x.com"})).json()
    assert (await client.delete(f"/users/{first['id']}")).status_code == 204
    second = (await client.post("/users", json={"name": "B", "email": "b@x.com"})).json()
    assert second["id"] != first["id"]
    # A client holding the old id finds nothing, not someone else.
    assert (await client.get(f"/users/{first['id']}")).status_code == 404


async def test_deleted_item_id_is_not_reused(client: httpx.AsyncClient) -> None:
    owner = (await client.post("/users", json={"name": "A", "email": "a@x.com"})).json()["id"]
    body = {"title": "T", "owner_id": owner}
    first = (await client.post("/items", json=body)).json()
    assert (await client.delete(f"/items/{first['id']}")).status_code == 204
    second = (await client.post("/items", json=body)).json()
    assert second["id"] != first["id"]
    assert (await client.get(f"/items/{first['id']}")).status_code == 404
