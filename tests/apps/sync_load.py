"""A ``def`` endpoint with a ``def`` dependency that reads the database, in two shapes.

``GET /users/{user_id}/items``: the dependency loads the user (404 if absent), the
endpoint lists up to ten of their items, and the response model is validated, which
FastAPI does in the threadpool for a ``def`` endpoint. ``SYNC_LOAD_SHAPE`` picks how
the session is provided:

* ``dbpool`` (default): ``SyncSessionDep`` on a plain router.
* ``tutorial``: FastAPI's tutorial, a sync ``get_db()`` generator over
  ``create_engine(pool_size, max_overflow, pool_timeout)`` from the same DB_* variables.

Serve it with ``uvicorn tests.apps.sync_load:create_app --factory``.
"""

# No `from __future__ import annotations`: the routes are built inside functions, and
# FastAPI cannot resolve string annotations that name a function's local dependencies.
import os
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session, sessionmaker

from fastapi_dbpool import Database, DatabaseSettings, SyncSessionDep, health_router
from users_api.models import Item, User

SHAPES = ("dbpool", "tutorial")
PATH = "/users/{user_id}/items"


class ItemOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    owner_id: int
    title: str
    status: str


def create_app() -> FastAPI:
    """The app in the shape named by ``SYNC_LOAD_SHAPE``."""
    shape = os.environ.get("SYNC_LOAD_SHAPE", "dbpool")
    if shape == "tutorial":
        return _tutorial_app(DatabaseSettings.from_env())
    if shape not in SHAPES:
        raise ValueError(f"SYNC_LOAD_SHAPE must be one of {SHAPES}, not {shape!r}")
    app = FastAPI()
    Database().install(app)
    router = APIRouter()

    def owner(user_id: int, session: SyncSessionDep) -> User:
        user = session.get(User, user_id)
        if user is None:
            raise HTTPException(404, f"user {user_id} not found")
        return user

    @router.get(PATH, response_model=list[ItemOut])
    def items(user: Annotated[User, Depends(owner)], session: SyncSessionDep) -> list[Item]:
        return list(session.scalars(select(Item).where(Item.owner_id == user.id).limit(10)))

    app.include_router(router)
    app.include_router(health_router())
    return app


def _tutorial_app(settings: DatabaseSettings) -> FastAPI:
    engine = create_engine(
        settings.sync_url,
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_timeout=settings.pool_timeout,
    )
    session_local = sessionmaker(bind=engine)

    def get_db() -> Iterator[Session]:
        db = session_local()
        try:
            yield db
        finally:
            db.close()

    def owner(user_id: int, db: Annotated[Session, Depends(get_db)]) -> User:
        user = db.get(User, user_id)
        if user is None:
            raise HTTPException(404, f"user {user_id} not found")
        return user

    app = FastAPI()

    @app.get(PATH, response_model=list[ItemOut])
    def items(
        user: Annotated[User, Depends(owner)], db: Annotated[Session, Depends(get_db)]
    ) -> list[Item]:
        return list(db.scalars(select(Item).where(Item.owner_id == user.id).limit(10)))

    @app.get("/health/live")
    def live() -> dict[str, str]:
        return {"status": "ok"}

    return app
