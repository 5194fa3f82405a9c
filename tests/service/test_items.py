"""The /items contract and background processing, on both databases."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from sqlalchemy import create_engine, select

from fastapi_dbpool import Database, DatabaseSettings
from users_api.models import Item
from users_api.processing import analyse


@pytest.fixture
async def owner(client: httpx.AsyncClient) -> int:
    response = await client.post("/users", json={"name": "Owner", "email": "owner@x.com"})
    return int(response.json()["id"])


async def new_item(client: httpx.AsyncClient, owner: int, **fields: object) -> dict:
    response = await client.post("/items", json={"title": "T", "owner_id": owner, **fields})
    assert response.status_code == 201, response.text
    return response.json()


async def test_create_read_update_delete(client: httpx.AsyncClient, owner: int) -> None:
    item = await new_item(client, owner, description="hello world")
    assert item["status"] == "pending" and item["result"] is None and item["processed_at"] is None
    assert item["created_at"].endswith("+00:00")
    assert (await client.get(f"/items/{item['id']}")).json() == item
    patched = await client.patch(f"/items/{item['id']}", json={"title": "New", "description": None})
    assert patched.status_code == 200
    assert patched.json()["title"] == "New" and patched.json()["description"] is None
    assert (await client.delete(f"/items/{item['id']}")).status_code == 204
    assert (await client.get(f"/items/{item['id']}")).status_code == 404
    assert (await client.delete(f"/items/{item['id']}")).status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {"title": ""},
        {"title": "x" * 201},
        {"title": "t", "description": "d" * 10_001},
        {"title": "nul\x00"},
        {"title": "t", "description": "nul\x00"},
        {"title": "t", "owner_id": "1"},
        {"title": "t", "status": "done"},
        {"title": "t", "result": {"words": 1}},
        {"title": "t", "id": 5},
        {"title": "t", "processed_at": "2020-01-01T00:00:00+00:00"},
    ],
)
async def test_invalid_item_is_422(client: httpx.AsyncClient, owner: int, body: dict) -> None:
    body = {"owner_id": owner, **body}
    assert (await client.post("/items", json=body)).status_code == 422
    assert (await client.get("/items")).json() == []


@pytest.mark.parametrize("owner_id", [2147483600, 0, -1, 99999999999999999999, 2**31])
async def test_unknown_or_out_of_range_owner_is_422(
    client: httpx.AsyncClient, owner_id: int
) -> None:
    assert (
        await client.post("/items", json={"title": "t", "owner_id": owner_id})
    ).status_code == 422


async def test_read_only_fields_on_update_are_422(client: httpx.AsyncClient, owner: int) -> None:
    item = await new_item(client, owner)
    for body in ({"owner_id": owner}, {"status": "done"}, {"result": None}, {"title": None}, {}):
        assert (await client.patch(f"/items/{item['id']}", json=body)).status_code == 422
    assert (await client.get(f"/items/{item['id']}")).json() == item


async def test_list_filters(client: httpx.AsyncClient, owner: int) -> None:
    other = (await client.post("/users", json={"name": "O", "email": "o@x.com"})).json()["id"]
    mine = [await new_item(client, owner) for _ in range(3)]
    await new_item(client, other)
    listed = (await client.get(f"/items?owner_id={owner}")).json()
    assert [i["id"] for i in listed] == [i["id"] for i in mine]
    assert len((await client.get("/items?status=pending")).json()) == 4
    assert (await client.get("/items?status=done")).json() == []
    assert len((await client.get("/items?limit=2&offset=1")).json()) == 2
    for query in ("status=bogus", "limit=0", "limit=101", "owner_id=abc", "owner_id=99999999999"):
        assert (await client.get(f"/items?{query}")).status_code == 422


async def wait_for_status(client: httpx.AsyncClient, item_id: int, status: str) -> dict:
    for _ in range(200):
        item = (await client.get(f"/items/{item_id}")).json()
        if item["status"] == status:
            return item
        await asyncio.sleep(0.02)
    raise AssertionError(f"item {item_id} never reached {status}: {item}")


async def test_process_runs_in_the_background(client: httpx.AsyncClient, owner: int) -> None:
    item = await new_item(client, owner, description="one two  three")
    response = await client.post(f"/items/{item['id']}/process")
    assert response.status_code == 202
    assert response.json() == {"id": item["id"], "status": "queued"}
    done = await wait_for_status(client, item["id"], "done")
    assert done["result"] == {"words": 3, "characters": 14}
    assert done["processed_at"].endswith("+00:00")
    assert (await client.post(f"/items/{item['id']}/process")).status_code == 409


async def test_process_without_description(client: httpx.AsyncClient, owner: int) -> None:
    item = await new_item(client, owner)
    assert (await client.post(f"/items/{item['id']}/process")).status_code == 202
    assert (await wait_for_status(client, item["id"], "done"))["result"] == {
        "words": 0,
        "characters": 0,
    }


async def test_process_unknown_item_is_404(client: httpx.AsyncClient) -> None:
    assert (await client.post("/items/2147483600/process")).status_code == 404
    assert (await client.post("/items/99999999999/process")).status_code == 422


async def test_repeat_while_queued_is_202_without_a_second_run(
    client: httpx.AsyncClient, owner: int, database: Database
) -> None:
    item = await new_item(client, owner, description="a b")
    first, again = await asyncio.gather(
        client.post(f"/items/{item['id']}/process"), client.post(f"/items/{item['id']}/process")
    )
    # The second is 202 (queued or processing), or 409 if the worker was done already.
    assert first.status_code == 202 or again.status_code == 202
    assert {first.status_code, again.status_code} <= {202, 409}
    await wait_for_status(client, item["id"], "done")
    async with database.session(read_only=True) as session:
        row = await session.get_one(Item, item["id"])
        assert (row.applications, row.attempts) == (1, 1)


async def test_concurrent_process_requests_run_once(
    client: httpx.AsyncClient, owner: int, database: Database
) -> None:
    items = [await new_item(client, owner, description="x y z") for _ in range(10)]
    responses = await asyncio.gather(
        *(client.post(f"/items/{i['id']}/process") for i in items for _ in range(3))
    )
    # A worker starts at once: a repeat that comes after it finished is told 409.
    assert {r.status_code for r in responses} <= {202, 409}
    by_item = [responses[3 * n : 3 * n + 3] for n in range(len(items))]
    assert all(any(r.status_code == 202 for r in each) for each in by_item)
    for item in items:
        assert (await wait_for_status(client, item["id"], "done"))["result"]["words"] == 3
    async with database.session(read_only=True) as session:
        assert set(await session.scalars(select(Item.applications))) == {1}


def test_analyse() -> None:
    assert analyse(None) == {"words": 0, "characters": 0}
    assert analyse("") == {"words": 0, "characters": 0}
    assert analyse("  a\tb\nc  ") == {"words": 3, "characters": 9}


# -- POST /items: which integrity error means "no such owner" -----------------------------

_PG_PROBE = {
    # The owner is deleted between the route's check and its INSERT: a real FK violation.
    "owner_deleted": "DELETE FROM users WHERE id = NEW.owner_id; RETURN NEW;",
    # Any other constraint refusing the row.
    "other_constraint": (
        "RAISE EXCEPTION USING ERRCODE = '23514', CONSTRAINT = 'ck_items_probe', MESSAGE = 'probe';"
    ),
}
_SQLITE_PROBE = {
    "owner_deleted": "DELETE FROM users WHERE id = NEW.owner_id;",
    "other_constraint": "SELECT RAISE(ABORT, 'CHECK constraint failed: ck_items_probe');",
}


@contextmanager
def _before_item_insert(database_url: str, probe: str) -> Iterator[None]:
    """Run the *probe* trigger body before each INSERT into items, for the block."""
    engine = create_engine(DatabaseSettings(url=database_url).sync_url)
    postgres = engine.dialect.name == "postgresql"
    try:
        with engine.begin() as conn:
            if postgres:
                conn.exec_driver_sql(
                    "CREATE FUNCTION items_probe() RETURNS trigger LANGUAGE plpgsql AS "
                    f"$$ BEGIN {_PG_PROBE[probe]} END $$"
                )
                conn.exec_driver_sql(
                    "CREATE TRIGGER items_probe BEFORE INSERT ON items "
                    "FOR EACH ROW EXECUTE FUNCTION items_probe()"
                )
            else:
                conn.exec_driver_sql(
                    "CREATE TRIGGER items_probe BEFORE INSERT ON items "
                    f"BEGIN {_SQLITE_PROBE[probe]} END"
                )
        yield
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "DROP TRIGGER IF EXISTS items_probe" + (" ON items" if postgres else "")
            )
            if postgres:
                conn.exec_driver_sql("DROP FUNCTION IF EXISTS items_probe()")
        engine.dispose()


async def test_owner_deleted_before_the_insert_is_422(
    client: httpx.AsyncClient, owner: int, database_url: str
) -> None:
    with _before_item_insert(database_url, "owner_deleted"):
        response = await client.post("/items", json={"title": "T", "owner_id": owner})
    assert response.status_code == 422, response.text
    assert f"no user with id {owner}" in response.text


async def test_other_constraint_on_insert_is_the_librarys_409(
    client: httpx.AsyncClient, owner: int, database_url: str
) -> None:
    with _before_item_insert(database_url, "other_constraint"):
        response = await client.post("/items", json={"title": "T", "owner_id": owner})
    assert response.status_code == 409, response.text
    body = response.json()
    assert body["code"] == "check_violation", body
    assert body["detail"].endswith(": ck_items_probe."), body
    assert "no user" not in response.text
