"""SQLAlchemy 2.x async ORM the usual way: create_async_engine and a session dependency.

This is the shape of the SQLAlchemy and FastAPI documentation: one AsyncSession per
request from ``async_sessionmaker``, ``session.get`` to read, add/commit/refresh to write.
The handlers are built by :func:`orm_routes` from a session dependency and a session
factory, so that ``orm_dbpool`` serves the very same handlers on fastapi_dbpool's
``SessionDep`` (what a user who keeps their ORM code writes).
"""

# No ``from __future__ import annotations``: the handlers' annotations name the session
# dependency given to orm_routes(), which must be evaluated where the handler is defined.

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Depends, FastAPI, HTTPException
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from .common import (
    DATABASE_URL,
    IS_SQLITE,
    POOL_SIZE,
    PROCESSABLE,
    ItemOut,
    ProcessAccepted,
    UserIn,
    UserOut,
    analyse,
    freeze_startup_heap,
)
from .models import Item, User


def orm_routes(
    SessionDep: Any,  # the alias the handlers are written against
    new_session: Callable[[], AbstractAsyncContextManager[AsyncSession]],
) -> APIRouter:
    """The four endpoints, on *SessionDep*; background work on ``new_session()``."""
    app = APIRouter()

    @app.get("/users/{user_id}", response_model=UserOut)
    async def get_user(user_id: int, session: SessionDep) -> Any:
        user = await session.get(User, user_id)
        if user is None:
            raise HTTPException(404, "user not found")
        return user

    @app.post("/users", status_code=201, response_model=UserOut)
    async def create_user(body: UserIn, session: SessionDep) -> Any:
        user = User(name=body.name, email=body.email)
        session.add(user)
        await session.commit()
        await session.refresh(user)
        return user

    @app.get("/items", response_model=list[ItemOut])
    async def list_items(
        owner_id: int, session: SessionDep, limit: int = 50, offset: int = 0
    ) -> Any:
        query = select(Item).where(Item.owner_id == owner_id).order_by(Item.id).limit(limit)
        return (await session.scalars(query.offset(offset))).all()

    async def _process_item(item_id: int) -> None:
        async with new_session() as session:
            description = await session.scalar(
                update(Item)
                .where(Item.id == item_id, Item.status == "queued")
                .values(status="processing")
                .returning(Item.description)
            )
            await session.commit()
            if description is None:
                return
            await session.execute(
                update(Item)
                .where(Item.id == item_id, Item.status == "processing")
                .values(status="done", result=analyse(description), processed_at=None)
            )
            await session.commit()

    @app.post("/items/{item_id}/process", status_code=202, response_model=ProcessAccepted)
    async def process(item_id: int, session: SessionDep, tasks: BackgroundTasks) -> Any:
        queued = await session.scalar(
            update(Item)
            .where(Item.id == item_id, Item.status.in_(PROCESSABLE))
            .values(status="queued", result=None, processed_at=None)
            .returning(Item.id)
        )
        await session.commit()
        if queued is not None:
            tasks.add_task(_process_item, item_id)
            return {"id": item_id, "status": "queued"}
        item = await session.get(Item, item_id)
        if item is None:
            raise HTTPException(404, "item not found")
        if item.status == "done":
            raise HTTPException(409, "item already processed")
        return {"id": item_id, "status": item.status}

    return app


_driver = "sqlite+aiosqlite" if IS_SQLITE else "postgresql+asyncpg"
engine = create_async_engine(
    _driver + "://" + DATABASE_URL.split("://", 1)[1], pool_size=POOL_SIZE, max_overflow=0
)
SessionLocal = async_sessionmaker(engine, expire_on_commit=False)


async def get_session() -> AsyncIterator[AsyncSession]:
    async with SessionLocal() as session:
        yield session


app = freeze_startup_heap(FastAPI())
app.include_router(orm_routes(Annotated[AsyncSession, Depends(get_session)], SessionLocal))
