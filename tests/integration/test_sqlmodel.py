"""SQLModel sessions on every session dependency: ``.exec()`` in async and ``def`` endpoints.

The app is written as a SQLModel user writes one: SQLModel table models, the typed
aliases of :mod:`fastapi_dbpool.sqlmodel`, ``session.exec(select(...))``. Runs on both
backends, once with the classes named explicitly and once auto-detected.
"""

# No `from __future__ import annotations`: FastAPI must resolve the endpoints' annotations.
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import sqlmodel
from fastapi import FastAPI, HTTPException
from sqlalchemy import create_engine
from sqlmodel import Field, SQLModel, select
from sqlmodel.ext.asyncio.session import AsyncSession as SQLModelAsyncSession

from fastapi_dbpool import Database, DatabaseSettings, DBPoolError
from fastapi_dbpool.sqlmodel import ReadSessionDep, SessionDep, SyncReadSessionDep, SyncSessionDep
from fastapi_dbpool.testing import assert_pool_idle


class Hero(SQLModel, table=True):
    __tablename__ = "sqlmodel_heroes"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True)


def build_app(database: Database) -> FastAPI:
    app = FastAPI()
    database.install(app)

    @app.post("/heroes", status_code=201)
    async def add(name: str, session: SessionDep) -> Hero:
        assert isinstance(session, SQLModelAsyncSession)
        hero = Hero(name=name)
        session.add(hero)
        await session.flush()
        return hero

    @app.get("/heroes")
    async def names(session: ReadSessionDep) -> list[str]:
        return [hero.name for hero in await session.exec(select(Hero).order_by(Hero.name))]

    @app.post("/sync/heroes", status_code=201)
    def add_sync(name: str, session: SyncSessionDep) -> Hero:
        assert isinstance(session, sqlmodel.Session)
        hero = Hero(name=name)
        session.add(hero)
        session.flush()
        return hero

    @app.get("/sync/heroes/{name}")
    def one_sync(name: str, session: SyncReadSessionDep) -> Hero:
        hero = session.exec(select(Hero).where(Hero.name == name)).first()
        if hero is None:
            raise HTTPException(404)
        return hero

    @app.post("/sync/heroes/{name}/fail")
    def add_then_fail(name: str, session: SyncSessionDep) -> None:
        session.add(Hero(name=name))
        session.flush()
        raise HTTPException(409, "rolled back")

    return app


@pytest.fixture
def heroes_url(database_url: str) -> Iterator[str]:
    """The test database with the heroes table, dropped afterwards."""
    engine = create_engine(DatabaseSettings(url=database_url).sync_url)
    Hero.__table__.create(engine, checkfirst=True)  # type: ignore[attr-defined]
    try:
        yield database_url
    finally:
        Hero.__table__.drop(engine)  # type: ignore[attr-defined]
        engine.dispose()


@pytest.fixture(params=["both-classes", "async-class-only"])
async def client(
    request: pytest.FixtureRequest, heroes_url: str
) -> AsyncIterator[httpx.AsyncClient]:
    if request.param == "both-classes":
        database = Database(
            url=heroes_url, session_class=SQLModelAsyncSession, sync_session_class=sqlmodel.Session
        )
    else:
        database = Database(url=heroes_url, session_class=SQLModelAsyncSession)
    app = build_app(database)
    async with app.router.lifespan_context(app):
        assert database.session_classes == (SQLModelAsyncSession, sqlmodel.Session)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client
        await assert_pool_idle(database)


async def test_exec_in_async_and_sync_endpoints(client: httpx.AsyncClient) -> None:
    assert (await client.post("/heroes", params={"name": "Deadpond"})).status_code == 201
    created = await client.post("/sync/heroes", params={"name": "Rusty-Man"})
    assert created.status_code == 201, created.text
    assert created.json()["name"] == "Rusty-Man"
    assert (await client.get("/heroes")).json() == ["Deadpond", "Rusty-Man"]
    found = await client.get("/sync/heroes/Deadpond")
    assert found.status_code == 200
    assert found.json()["name"] == "Deadpond"


async def test_sync_sqlmodel_session_rolls_back_on_error(client: httpx.AsyncClient) -> None:
    assert (await client.post("/sync/heroes/Ghost/fail")).status_code == 409
    assert (await client.get("/sync/heroes/Ghost")).status_code == 404
    assert (await client.get("/heroes")).json() == []


async def test_sqlalchemy_sessions_without_sqlmodel_tables(database_url: str) -> None:
    """Explicit SQLAlchemy classes win over detection."""
    from sqlalchemy.ext.asyncio import AsyncSession
    from sqlalchemy.orm import Session

    database = Database(url=database_url, session_class=AsyncSession, sync_session_class=Session)
    async with database, database.session() as session:
        assert type(session) is AsyncSession


DETECT = """
import asyncio, sys
from sqlmodel import Field, SQLModel
from fastapi_dbpool import Database

class Item(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)

async def main():
    async with Database(url=sys.argv[1]) as database:
        print(*(f"{cls.__module__}.{cls.__name__}" for cls in database.session_classes))

asyncio.run(main())
"""


def test_sqlmodel_sessions_detected_in_a_sqlmodel_app(tmp_path) -> None:
    """A process whose models are all SQLModel gets SQLModel's sessions without options."""
    url = f"sqlite:///{tmp_path / 'detect.db'}"
    done = subprocess.run(
        [sys.executable, "-c", DETECT, url], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        "sqlmodel.ext.asyncio.session.AsyncSession",
        "sqlmodel.orm.session.Session",
    ]


async def test_no_detection_when_sqlalchemy_models_are_mapped_too(database_url: str) -> None:
    """This process maps users_api's SQLAlchemy models as well: SQLAlchemy's sessions."""
    from sqlalchemy.ext.asyncio import AsyncSession
    from sqlalchemy.orm import Session

    import users_api.models  # noqa: F401

    async with Database(url=database_url) as database:
        assert database.session_classes == (AsyncSession, Session)


def test_session_class_must_be_a_session_subclass() -> None:
    with pytest.raises(TypeError, match="session_class must be a subclass"):
        Database(url="sqlite:///unused.db", session_class=dict)  # type: ignore[arg-type]


async def test_sqlmodel_aliases_on_sqlalchemy_sessions_fail_at_start(database_url: str) -> None:
    """Detection falls back to SQLAlchemy's sessions (users_api's models are mapped too):
    an app on the SQLModel aliases must not start, rather than fail at its first .exec()."""
    import users_api.models  # noqa: F401

    for alias, endpoint_kind in ((SessionDep, "async"), (SyncReadSessionDep, "def")):
        app = FastAPI()
        Database(url=database_url).install(app)
        if endpoint_kind == "async":

            @app.get("/heroes")
            async def heroes(session: alias) -> list[str]:  # type: ignore[valid-type]
                return [hero.name for hero in await session.exec(select(Hero))]

        else:

            @app.get("/heroes")
            def heroes_sync(session: alias) -> list[str]:  # type: ignore[valid-type]
                return [hero.name for hero in session.exec(select(Hero))]

        with pytest.raises(DBPoolError, match=r"GET /heroes .*session_class=") as failed:
            async with app.router.lifespan_context(app):
                pass
        assert "sqlalchemy.ext.asyncio.session.AsyncSession" in str(
            failed.value
        ) or "sqlalchemy.orm.session.Session" in str(failed.value)
