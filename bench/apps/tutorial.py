"""The tutorial's code as written: a sync engine and a sync Session inside ``async def``.

Taken from the widely copied "FastAPI database connection pool" tutorial: ``create_engine``,
``sessionmaker(autocommit=False, autoflush=False)``, an ``async def get_db()`` that yields
a sync Session, ``async def`` path operations calling it directly (each query blocks the
event loop), add/commit/refresh to create, and the request's session handed to the
background task. Only the pool size is set to 10 like every other app, and the body is a
Pydantic model (the tutorial's ORM-model body does not run on FastAPI).
"""

from __future__ import annotations

from typing import Any

from fastapi import BackgroundTasks, Depends, FastAPI, HTTPException
from sqlalchemy import create_engine, select, update
from sqlalchemy.orm import Session, sessionmaker

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

if IS_SQLITE:
    engine = create_engine(
        DATABASE_URL,
        connect_args={"check_same_thread": False},
        pool_size=POOL_SIZE,
        max_overflow=0,
    )
else:
    engine = create_engine(
        "postgresql+psycopg://" + DATABASE_URL.split("://", 1)[1],
        pool_size=POOL_SIZE,
        max_overflow=0,
    )
SessionLocal = sessionmaker(autocommit=False, autoflush=False, bind=engine)

app = freeze_startup_heap(FastAPI())


async def get_db() -> Any:
    db = SessionLocal()
    try:
        yield db
    finally:
        db.close()


@app.get("/users/{user_id}", response_model=UserOut)
async def read_user(user_id: int, db: Session = Depends(get_db)) -> Any:  # noqa: B008
    user = db.get(User, user_id)
    if user is None:
        raise HTTPException(404, "user not found")
    return user


@app.post("/users", status_code=201, response_model=UserOut)
async def create_user(body: UserIn, db: Session = Depends(get_db)) -> Any:  # noqa: B008
    user = User(name=body.name, email=body.email)
    db.add(user)
    db.commit()
    db.refresh(user)
    return user


@app.get("/items", response_model=list[ItemOut])
async def list_items(
    owner_id: int,
    limit: int = 50,
    offset: int = 0,
    db: Session = Depends(get_db),  # noqa: B008
) -> Any:
    query = select(Item).where(Item.owner_id == owner_id).order_by(Item.id).limit(limit)
    return db.scalars(query.offset(offset)).all()


async def background_task(item_id: int, db: Session) -> None:
    description = db.scalar(
        update(Item)
        .where(Item.id == item_id, Item.status == "queued")
        .values(status="processing")
        .returning(Item.description)
    )
    db.commit()
    if description is None:
        return
    db.execute(
        update(Item)
        .where(Item.id == item_id, Item.status == "processing")
        .values(status="done", result=analyse(description))
    )
    db.commit()
    db.close()


@app.post("/items/{item_id}/process", status_code=202, response_model=ProcessAccepted)
async def process_item(
    item_id: int,
    background_tasks: BackgroundTasks,
    db: Session = Depends(get_db),  # noqa: B008
) -> Any:
    queued = db.scalar(
        update(Item)
        .where(Item.id == item_id, Item.status.in_(PROCESSABLE))
        .values(status="queued", result=None, processed_at=None)
        .returning(Item.id)
    )
    db.commit()
    if queued is not None:
        background_tasks.add_task(background_task, item_id, db)
        return {"id": item_id, "status": "queued"}
    item = db.get(Item, item_id)
    if item is None:
        raise HTTPException(404, "item not found")
    if item.status == "done":
        raise HTTPException(409, "item already processed")
    return {"id": item_id, "status": item.status}
