"""The users_api as a user runs it: migrated, then served by a real uvicorn process."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import USERS_API, uvicorn_server

CANARY = "CANARY-pw-7f3a"


@pytest.fixture
def server(database_url: str, backend: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    url = database_url
    if backend == "postgres":  # trust auth ignores the password: a canary that must never show
        url = url.replace("postgres@", f"postgres:{CANARY}@")
    log = tmp_path / "server.log"
    env = {"DATABASE_URL": url, "DB_POOL_SIZE": "3"}
    with uvicorn_server(USERS_API, env, log_path=log) as running:
        yield running.url, log


def test_served_by_uvicorn(server: tuple[str, Path]) -> None:
    base, log = server
    with httpx.Client(base_url=base, timeout=10) as client:
        assert client.get("/health/ready").status_code == 200
        user = client.post("/users", json={"name": "U", "email": "U@x.com"})
        assert user.status_code == 201
        uid = user.json()["id"]
        assert client.post("/users", json={"name": "U", "email": "u@X.com"}).status_code == 409
        item = client.post("/items", json={"title": "t", "description": "a b", "owner_id": uid})
        assert client.post(f"/items/{item.json()['id']}/process").status_code == 202
        for _ in range(100):
            if client.get(f"/items/{item.json()['id']}").json()["status"] == "done":
                break
            time.sleep(0.05)
        else:
            raise AssertionError("item not processed")
        assert client.get("/users/99999999999999999999").status_code in (404, 422)
        assert client.post(
            "/users", content=b"{", headers={"content-type": "application/json"}
        ).status_code in (400, 422)
    text = log.read_text()
    assert "Traceback" not in text
    assert CANARY not in text
