"""What every comparison app shares: the settings it reads and the bodies it answers.

The comparison apps are deliberately minimal: each is what a competent engineer writes
with one tool (raw driver, SQLAlchemy ORM, the tutorial's sync session), answering the
same four endpoints with the same JSON as users_api, so that only the database layer
differs. Bodies are plain Pydantic models (no email validation): the minimal apps do
the least work a real app would, which makes them a demanding baseline.
"""

from __future__ import annotations

import gc
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict

DATABASE_URL = os.environ.get("BENCH_DATABASE_URL", "sqlite:///./bench.db")
POOL_SIZE = int(os.environ.get("BENCH_POOL_SIZE", "10"))
IS_SQLITE = DATABASE_URL.startswith("sqlite")
PROCESSABLE = ("pending", "failed")


def sqlite_path(url: str = DATABASE_URL) -> str:
    """The file path of a ``sqlite:///path`` URL."""
    return url.split("///", 1)[1]


def postgres_dsn(url: str = DATABASE_URL) -> str:
    """A libpq/asyncpg DSN (``postgresql://``) for *url*, whatever driver it names."""
    scheme, rest = url.split("://", 1)
    return "postgresql://" + rest if scheme.startswith("postgres") else url


class UserIn(BaseModel):
    name: str
    email: str


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    email: str
    created_at: datetime


class ItemOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    owner_id: int
    title: str
    description: str | None
    status: str
    result: dict[str, Any] | None
    processed_at: datetime | None
    created_at: datetime


class ProcessAccepted(BaseModel):
    id: int
    status: str


def analyse(description: str | None) -> dict[str, int]:
    text = description or ""
    return {"words": len(text.split()), "characters": len(text)}


def freeze_startup_heap(app: FastAPI) -> FastAPI:
    """Freeze the objects that exist once *app* has started, as users_api does.

    Full garbage collections then skip them. users_api does this in its lifespan;
    every compared app does the same so that the comparison stays about the database
    layer, not about garbage-collector tuning.
    """
    original = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app_: FastAPI) -> AsyncIterator[Any]:
        async with original(app_) as state:
            gc.collect()
            gc.freeze()
            yield state

    app.router.lifespan_context = lifespan
    return app
