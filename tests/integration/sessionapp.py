"""A small app on the library alone, to test request and background sessions.

Its child table's foreign key is DEFERRABLE INITIALLY DEFERRED, so an insert with an
unknown parent succeeds at flush and fails at COMMIT: the way to make a commit fail
on purpose on both SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import BackgroundTasks, FastAPI, HTTPException, Response
from sqlalchemy import ForeignKey, Integer, String, create_engine, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fastapi_dbpool import Database, DatabaseDep, DatabaseSettings, ReadSessionDep, SessionDep


class Base(DeclarativeBase):
    pass


class Parent(Base):
    __tablename__ = "dbpool_test_parent"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(50), default="p")


class Child(Base):
    __tablename__ = "dbpool_test_child"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    parent_id: Mapped[int] = mapped_column(
        ForeignKey("dbpool_test_parent.id", deferrable=True, initially="DEFERRED")
    )


def create_tables(settings: DatabaseSettings) -> None:
    engine = create_engine(settings.sync_url)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    engine.dispose()


def drop_tables(settings: DatabaseSettings) -> None:
    engine = create_engine(settings.sync_url)
    Base.metadata.drop_all(engine)
    engine.dispose()


class AtResponseStart:
    """ASGI middleware: run *probe* when the response starts, before any byte is sent."""

    def __init__(self, app: ASGIApp, probe: Callable[[], Awaitable[None]]) -> None:
        self.app = app
        self.probe = probe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_after_probe(message: Message) -> None:
            if message["type"] == "http.response.start":
                await self.probe()
            await send(message)

        await self.app(scope, receive, send_after_probe)


async def count_parents(session: AsyncSession) -> int:
    return int(await session.scalar(select(func.count()).select_from(Parent)) or 0)


def build_app(settings: DatabaseSettings, observations: list[dict[str, Any]]) -> FastAPI:
    app = FastAPI()
    database = Database(settings)
    database.install(app)

    async def observe() -> None:
        # A separate session: sees only what was committed.
        async with database.session(read_only=True) as session:
            parents = await count_parents(session)
        observations.append(
            {"parents": parents, "checked_out": database.pool_snapshot().checked_out}
        )

    # Observe *before* the probe's own checkout: record what the response start sees.
    async def probe() -> None:
        checked_out = database.pool_snapshot().checked_out
        await observe()
        observations[-1]["checked_out"] = checked_out

    app.add_middleware(AtResponseStart, probe=probe)

    @app.post("/parents", status_code=201)
    async def add_parent(session: SessionDep) -> dict[str, int]:
        parent = Parent()
        session.add(parent)
        await session.flush()
        return {"id": parent.id}

    @app.post("/parents/then-http-error")
    async def add_then_404(session: SessionDep) -> None:
        session.add(Parent())
        await session.flush()
        raise HTTPException(404, "nope")

    @app.post("/parents/then-crash")
    async def add_then_crash(session: SessionDep) -> None:
        session.add(Parent())
        await session.flush()
        raise RuntimeError("handler bug")

    @app.post("/children/{parent_id}", status_code=201)
    async def add_child(parent_id: int, session: SessionDep) -> dict[str, int]:
        child = Child(parent_id=parent_id)
        session.add(child)
        await session.flush()  # passes: the foreign key is checked at COMMIT
        return {"id": child.id}

    @app.post("/outcome")
    async def outcome(kind: str, status: int, session: SessionDep) -> Response:
        session.add(Parent(name=f"{kind}-{status}"))
        await session.flush()
        if kind == "return":
            return Response(status_code=status)
        if kind == "http_error":
            raise HTTPException(status, "as asked")
        raise RuntimeError("as asked")

    @app.get("/parents/count")
    async def parents(session: ReadSessionDep) -> int:
        return await count_parents(session)

    @app.post("/parents/slow", status_code=201)
    async def slow_parent(session: SessionDep) -> dict[str, int]:
        parent = Parent()
        session.add(parent)
        await session.flush()
        await asyncio.sleep(0.2)
        return {"id": parent.id}

    @app.post("/background", status_code=202)
    async def background(database: DatabaseDep, tasks: BackgroundTasks) -> None:
        @database.with_session
        async def add(session: AsyncSession, name: str) -> None:
            session.add(Parent(name=name))

        tasks.add_task(add, "from-background")

    return app
