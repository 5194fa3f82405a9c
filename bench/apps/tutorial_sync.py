"""The tutorial's sync shape done as its authors meant it: ``def`` endpoints and ``get_db()``.

A sync engine, ``sessionmaker``, a sync ``get_db()`` generator dependency and ``def`` path
operations, which FastAPI runs in its threadpool. With 40 threads (FastAPI's default) this
shape deadlocks once clients outnumber threads plus connections (FastAPI issue #3205), so
the threadpool gets 100 threads here: the comparison is with the tutorial at its best.
users_api's ``GET /users/{id}/sync`` (``SyncReadSessionDep``) is measured against it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import anyio.to_thread
from fastapi import Depends, FastAPI, HTTPException
from sqlalchemy.orm import Session

from .common import UserOut, freeze_startup_heap
from .models import User

# The tutorial's engine and sessionmaker, as bench.apps.tutorial builds them.
from .tutorial import SessionLocal

THREADS = 100


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    anyio.to_thread.current_default_thread_limiter().total_tokens = THREADS
    yield


app = freeze_startup_heap(FastAPI(lifespan=lifespan))


def get_db() -> Iterator[Session]:
    db = SessionLocal()
    try:
        yield db
    finally:
        db.close()


DbDep = Annotated[Session, Depends(get_db)]


def _user(db: Session, user_id: int) -> Any:
    user = db.get(User, user_id)
    if user is None:
        raise HTTPException(404, "user not found")
    return user


@app.get("/users/{user_id}", response_model=UserOut)
def get_user(user_id: int, db: DbDep) -> Any:
    return _user(db, user_id)


@app.get("/users/{user_id}/sync", response_model=UserOut)
def get_user_sync(user_id: int, db: DbDep) -> Any:
    return _user(db, user_id)
