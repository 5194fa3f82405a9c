"""The app's routes are checked when it starts: mistakes fail there, not under load.

A sync session in an ``async def`` endpoint or dependency would block the event loop;
a SQLModel alias on SQLAlchemy sessions would raise AttributeError at ``.exec()``.
"""

# No `from __future__ import annotations`: FastAPI must resolve the endpoints' annotations.
from typing import Annotated

import pytest
from fastapi import APIRouter, Depends, FastAPI
from sqlalchemy import text
from sqlalchemy.orm import Session

from fastapi_dbpool import Database, DBPoolError, SessionDep, SyncReadSessionDep, SyncSessionDep


def nested(router: APIRouter) -> APIRouter:
    """*router* included two levels down, as apps split their routes."""
    middle, outer = APIRouter(prefix="/v1"), APIRouter(prefix="/api")
    middle.include_router(router, prefix="/things")
    outer.include_router(middle)
    return outer


def app_with(router: APIRouter, database_url: str) -> FastAPI:
    app = FastAPI()
    Database(url=database_url).install(app)
    app.include_router(nested(router))
    return app


async def start(app: FastAPI) -> None:
    async with app.router.lifespan_context(app):
        pass


async def test_async_endpoint_with_a_sync_session_fails_at_start(database_url: str) -> None:
    router = APIRouter()

    @router.get("/count")
    async def count(session: SyncSessionDep) -> int:
        return int(session.scalar(text("SELECT 1")) or 0)

    app = app_with(router, database_url)
    with pytest.raises(DBPoolError) as failed:
        await start(app)
    message = str(failed.value)
    assert "GET /api/v1/things/count" in message
    assert "count" in message and "SyncSessionDep" in message
    assert "use SessionDep" in message.replace("Use", "use")
    assert "plain `def`" in message


async def test_async_dependency_with_a_sync_session_fails_at_start(database_url: str) -> None:
    async def repository(session: SyncReadSessionDep) -> Session:
        return session

    router = APIRouter()

    @router.get("/")
    def listing(repo: Annotated[Session, Depends(repository)]) -> list[int]:
        return []

    app = app_with(router, database_url)
    with pytest.raises(
        DBPoolError, match=r"dependency .*repository is `async def` but takes SyncReadSessionDep"
    ):
        await start(app)


async def test_def_endpoints_with_sync_sessions_start(database_url: str) -> None:
    def repository(session: SyncSessionDep) -> Session:  # a def dependency: a thread too
        return session

    router = APIRouter()

    @router.get("/count")
    def count(session: SyncSessionDep) -> int:
        return 1

    @router.get("/repo")
    def by_repository(repo: Annotated[Session, Depends(repository)]) -> int:
        return 1

    @router.get("/async")
    async def not_sync(session: SessionDep) -> int:
        return 1

    await start(app_with(router, database_url))
