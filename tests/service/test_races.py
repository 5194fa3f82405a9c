"""users_api under concurrent requests on the same ids: never a 500, and a consistent end.

Each round creates a user and an item, then sends at once 8 PATCHes of the user, 8
PATCHes of the item, 8 process requests of the item, and a DELETE of each, so that
every write races a delete of its row (issue 9: a PATCH racing a DELETE was a 500,
StaleDataError). Every write is one conditional statement, so each request either
finds its row or answers 404.
"""

from __future__ import annotations

import asyncio
import gc
from collections import Counter
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from fastapi_dbpool.testing import assert_pool_idle
from tests.service.statuses import record_statuses

ROUNDS = 8
PER_ID = 8

# What each kind of request may answer while its row is being deleted.
ALLOWED = {
    "patch_user": {200, 404},
    "patch_item": {200, 404},
    "process": {202, 404, 409},
    "delete_user": {204},  # nothing else deletes the user
    "delete_item": {204, 404},  # the user's cascade may delete it first
}


@pytest.fixture
async def racing_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    # raise_app_exceptions=False: a handler's crash is counted as the 500 a client gets.
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            record_statuses(client, app.openapi())
            yield client
        await assert_pool_idle(app.state.fastapi_dbpool)
    gc.collect()


async def _round(client: httpx.AsyncClient, n: int) -> list[tuple[str, httpx.Response]]:
    user = (await client.post("/users", json={"name": "R", "email": f"r{n}@x.com"})).json()
    item = (
        await client.post(
            "/items", json={"title": "t", "description": "a b", "owner_id": user["id"]}
        )
    ).json()
    uid, iid = user["id"], item["id"]
    calls: list[tuple[str, object]] = []
    for i in range(PER_ID):
        calls.append(("patch_user", client.patch(f"/users/{uid}", json={"name": f"n{i}"})))
        calls.append(("patch_item", client.patch(f"/items/{iid}", json={"title": f"t{i}"})))
        calls.append(("process", client.post(f"/items/{iid}/process")))
        if i == PER_ID // 2:  # in the middle of the others
            calls.append(("delete_item", client.delete(f"/items/{iid}")))
            calls.append(("delete_user", client.delete(f"/users/{uid}")))
    responses = await asyncio.gather(*(call for _, call in calls))  # type: ignore[arg-type]
    outcome = [(kind, response) for (kind, _), response in zip(calls, responses, strict=True)]
    assert (await client.get(f"/users/{uid}")).status_code == 404
    assert (await client.get(f"/items/{iid}")).status_code == 404
    return outcome


@pytest.mark.slow
async def test_patch_delete_and_process_on_the_same_ids_never_500(
    racing_client: httpx.AsyncClient,
) -> None:
    seen: Counter[tuple[str, int]] = Counter()
    for n in range(ROUNDS):
        for kind, response in await _round(racing_client, n):
            seen[kind, response.status_code] += 1
            assert response.status_code in ALLOWED[kind], (kind, response.text)
    assert not [key for key in seen if key[1] >= 500], seen
    # The race was real: some writes found their row, some came after the delete.
    assert seen["patch_user", 200] > 0 and seen["patch_user", 404] > 0, seen


async def test_two_patches_to_one_email_one_wins(racing_client: httpx.AsyncClient) -> None:
    client = racing_client
    for n in range(ROUNDS):
        a = (await client.post("/users", json={"name": "A", "email": f"a{n}@x.com"})).json()
        b = (await client.post("/users", json={"name": "B", "email": f"b{n}@x.com"})).json()
        target = {"email": f"taken{n}@x.com"}
        first, second = await asyncio.gather(
            client.patch(f"/users/{a['id']}", json=target),
            client.patch(f"/users/{b['id']}", json=target),
        )
        assert sorted([first.status_code, second.status_code]) == [200, 409]
        lost = first if first.status_code == 409 else second
        assert lost.json()["detail"] == "a user with this email already exists"
