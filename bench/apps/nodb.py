"""The ceiling: the four endpoints answered with constants, no database at all."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import FastAPI

from .common import ItemOut, ProcessAccepted, UserIn, UserOut, freeze_startup_heap

app = freeze_startup_heap(FastAPI())
NOW = datetime(2026, 1, 1, tzinfo=UTC)


@app.get("/users/{user_id}", response_model=UserOut)
async def get_user(user_id: int) -> UserOut:
    return UserOut(
        id=user_id, name="Bench User", email=f"user{user_id}@bench.example", created_at=NOW
    )


@app.post("/users", status_code=201, response_model=UserOut)
async def create_user(body: UserIn) -> UserOut:
    return UserOut(id=1, name=body.name, email=body.email, created_at=NOW)


@app.get("/items", response_model=list[ItemOut])
async def list_items(owner_id: int, limit: int = 50, offset: int = 0) -> list[ItemOut]:
    return [
        ItemOut(
            id=owner_id * 10 + n,
            owner_id=owner_id,
            title=f"item {n}",
            description="some words to count",
            status="pending",
            result=None,
            processed_at=None,
            created_at=NOW,
        )
        for n in range(10)
    ]


@app.post("/items/{item_id}/process", status_code=202, response_model=ProcessAccepted)
async def process(item_id: int) -> ProcessAccepted:
    return ProcessAccepted(id=item_id, status="queued")
