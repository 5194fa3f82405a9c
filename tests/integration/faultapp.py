"""A small app on the library alone whose endpoints make each class of database failure.

Real failures where the database can make them: two SERIALIZABLE transactions that
conflict, two transactions that lock two rows in opposite order, a row locked by
another connection (NOWAIT), a backend killed by ``pg_terminate_backend``, another
process holding SQLite's write lock, a row deleted under the ORM (StaleDataError).
Where it cannot (disk full, cannot connect now, a serialization failure at COMMIT), a
deferred constraint trigger raises the SQLSTATE asked for at COMMIT: the table's
``fault`` column names it.

Every fault can be sent through each path of the library: an ORM session (commit in the
dependency's exit), a direct connection (commit when it closes), ``execute_committed``
(the statement is the commit), and a sync session.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import (
    ForeignKey,
    Integer,
    String,
    UniqueConstraint,
    bindparam,
    create_engine,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from fastapi_dbpool import (
    ConnectionDep,
    Database,
    DatabaseSettings,
    SessionDep,
    SyncSessionDep,
)
from fastapi_dbpool.testing import assert_pool_idle


class Base(DeclarativeBase):
    pass


class Row(Base):
    __tablename__ = "dbpool_fault"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    n: Mapped[int] = mapped_column(Integer, default=0)
    fault: Mapped[str | None] = mapped_column(String(5))


class Parent(Base):
    """Named constraints, so that the 409's detail can name them."""

    __tablename__ = "dbpool_parent"
    __table_args__ = (UniqueConstraint("name", name="uq_dbpool_parent_name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(20))


class Child(Base):
    __tablename__ = "dbpool_child"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    parent_id: Mapped[int] = mapped_column(
        ForeignKey("dbpool_parent.id", name="fk_dbpool_child_parent")
    )
    label: Mapped[str] = mapped_column(String(20))  # NOT NULL


# One statement for each kind of integrity error; dbpool_parent holds (1, 'p-one').
CONFLICTS = {
    "unique": text("INSERT INTO dbpool_parent (id, name) VALUES (2, 'p-one')"),
    "foreign_key": text("INSERT INTO dbpool_child (parent_id, label) VALUES (999, 'x')"),
    "not_null": text("INSERT INTO dbpool_child (parent_id, label) VALUES (1, NULL)"),
}

# PostgreSQL: at COMMIT, raise the SQLSTATE the row's fault column names.
_PG_TRIGGER = [
    """
    CREATE OR REPLACE FUNCTION dbpool_fault_raise() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.fault IS NOT NULL THEN
            RAISE EXCEPTION USING ERRCODE = NEW.fault, MESSAGE = 'injected fault';
        END IF;
        RETURN NULL;
    END $$
    """,
    """
    CREATE CONSTRAINT TRIGGER dbpool_fault_at_commit AFTER INSERT OR UPDATE ON dbpool_fault
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION dbpool_fault_raise()
    """,
]
# SQLite has neither deferred triggers nor SQLSTATEs: a trigger's RAISE(ABORT) is what
# it can do (an integrity error, at the statement).
_SQLITE_TRIGGER = [
    """
    CREATE TRIGGER dbpool_fault_raise AFTER INSERT ON dbpool_fault
    WHEN NEW.fault IS NOT NULL BEGIN SELECT RAISE(ABORT, 'injected fault'); END
    """
]

INSERT = insert(Row).values(n=bindparam("n"), fault=bindparam("fault")).returning(Row.id)
BUMP = update(Row).where(Row.id == bindparam("row_id")).values(n=Row.n + 1).returning(Row.n)
NOWAIT = select(Row.id).where(Row.id == bindparam("row_id")).with_for_update(nowait=True)
TERMINATE = select(func.pg_terminate_backend(bindparam("pid", type_=Integer)))


def create_tables(settings: DatabaseSettings) -> None:
    engine = create_engine(settings.sync_url)
    try:
        Base.metadata.drop_all(engine)
        Base.metadata.create_all(engine)
        with engine.begin() as conn:
            for ddl in _PG_TRIGGER if engine.dialect.name == "postgresql" else _SQLITE_TRIGGER:
                conn.exec_driver_sql(ddl)
            conn.execute(insert(Row), [{"n": 0}, {"n": 0}])  # ids 1 and 2
            conn.execute(insert(Parent).values(id=1, name="p-one"))
    finally:
        engine.dispose()


def drop_tables(settings: DatabaseSettings) -> None:
    engine = create_engine(settings.sync_url)
    try:
        Base.metadata.drop_all(engine)
    finally:
        engine.dispose()


class Rendezvous:
    """Lets two concurrent requests meet between their statements (one per test).

    Also counts the calls of each handler, retries included.
    """

    def __init__(self) -> None:
        self.barrier = asyncio.Barrier(2)
        self.calls: dict[str, int] = {}
        self.database: Database | None = None  # the app's, once built

    def count(self, name: str) -> int:
        self.calls[name] = self.calls.get(name, 0) + 1
        return self.calls[name]

    async def meet(self) -> None:
        await asyncio.wait_for(self.barrier.wait(), timeout=10)


def build_app(settings: DatabaseSettings, meeting: Rendezvous) -> FastAPI:
    app = FastAPI()
    database = Database(settings)
    database.install(app)
    meeting.database = database

    @app.post("/fault/session")
    async def fault_session(code: str, session: SessionDep) -> dict[str, Any]:
        row = Row(n=0, fault=code)
        session.add(row)
        await session.flush()  # passes on PostgreSQL: the trigger fires at COMMIT
        return {"id": row.id}

    @app.post("/fault/direct")
    async def fault_direct(code: str, db: ConnectionDep) -> dict[str, Any]:
        return {"id": await db.scalar(INSERT, n=0, fault=code)}

    @app.post("/fault/committed")
    async def fault_committed(code: str, db: ConnectionDep) -> dict[str, Any]:
        (row,) = await db.execute_committed(INSERT, n=0, fault=code)
        return row

    @app.post("/fault/sync")
    def fault_sync(code: str, session: SyncSessionDep) -> dict[str, Any]:
        row = Row(n=0, fault=code)
        session.add(row)
        session.flush()
        return {"id": row.id}

    @app.post("/serializable/{row_id}")
    async def serializable(row_id: int, session: SessionDep) -> dict[str, Any]:
        # Read-then-write under SERIALIZABLE: two of these at once form a dangerous
        # structure, and PostgreSQL fails one of them with 40001.
        await session.execute(text("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"))
        total = await session.scalar(select(func.sum(Row.n)).where(Row.id.in_([1, 2])))
        await meeting.meet()
        await session.execute(update(Row).where(Row.id == row_id).values(n=(total or 0) + 1))
        return {"n": total}

    @app.post("/lock/{first}/{second}")
    async def lock(first: int, second: int, db: ConnectionDep) -> dict[str, Any]:
        # Two of these with the rows in opposite order: a deadlock PostgreSQL breaks
        # (40P01) after deadlock_timeout.
        await db.all(BUMP, row_id=first)
        await meeting.meet()
        await db.all(BUMP, row_id=second)
        return {"locked": [first, second]}

    @app.post("/nowait/{row_id}")
    async def nowait(row_id: int, db: ConnectionDep) -> dict[str, Any]:
        await db.all(NOWAIT, row_id=row_id)
        return {"locked": row_id}

    @app.post("/terminated")
    async def terminated(db: ConnectionDep) -> dict[str, Any]:
        # The backend serving this request is killed between two statements.
        pid = await db.scalar(text("SELECT pg_backend_pid()").columns(pid=Integer))
        async with database.connection() as admin:
            await admin.all(TERMINATE, pid=pid)
        await db.all(BUMP, row_id=1)
        return {"pid": pid}

    @app.post("/stale/{row_id}")
    async def stale(row_id: int, session: SessionDep) -> dict[str, Any]:
        # The ORM loaded the row; it is gone when the change is flushed.
        row = await session.get(Row, row_id)
        assert row is not None
        await session.execute(text("DELETE FROM dbpool_fault WHERE id = :i").bindparams(i=row_id))
        row.n += 1
        await session.flush()  # UPDATE ... matched 0 rows: StaleDataError
        return {"n": row.n}

    @app.post("/conflict/session/{kind}")
    async def conflict_session(kind: str, session: SessionDep) -> dict[str, Any]:
        await session.execute(CONFLICTS[kind])
        return {"ok": True}

    @app.post("/conflict/direct/{kind}")
    async def conflict_direct(kind: str, db: ConnectionDep) -> dict[str, Any]:
        await db.all(CONFLICTS[kind])
        return {"ok": True}

    @app.post("/conflict/sync/{kind}")
    def conflict_sync(kind: str, session: SyncSessionDep) -> dict[str, Any]:
        session.execute(CONFLICTS[kind])
        return {"ok": True}

    @app.post("/bad-sql")
    async def bad_sql(session: SessionDep) -> dict[str, Any]:
        await session.execute(text("SELECT * FROM dbpool_no_such_table"))  # a bug: 500
        return {"ok": True}

    # The same races, in handlers marked safe to re-run.

    @app.post("/retry/serializable/{row_id}")
    @Database.retrying(retries=5)
    async def retry_serializable(row_id: int, session: SessionDep) -> dict[str, Any]:
        call = meeting.count("serializable")
        await session.execute(text("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"))
        total = await session.scalar(select(func.sum(Row.n)).where(Row.id.in_([1, 2])))
        if call <= 2:  # the first attempts of both requests meet; retries run alone
            await meeting.meet()
        await session.execute(update(Row).where(Row.id == row_id).values(n=(total or 0) + 1))
        return {"n": total}

    @app.post("/retry/lock/{first}/{second}")
    @Database.retrying(retries=5)
    async def retry_lock(first: int, second: int, db: ConnectionDep) -> dict[str, Any]:
        call = meeting.count("lock")
        await db.all(BUMP, row_id=first)
        if call <= 2:
            await meeting.meet()
        await db.all(BUMP, row_id=second)
        return {"locked": [first, second]}

    @app.post("/retry/fault")
    @Database.retrying(retries=3, max_seconds=10)
    async def retry_fault(code: str, session: SessionDep) -> dict[str, Any]:
        meeting.count("fault")
        session.add(Row(n=0, fault=code))  # fails at COMMIT, every time
        return {"ok": True}

    @app.post("/write")
    async def write(session: SessionDep) -> dict[str, Any]:
        await session.execute(update(Row).where(Row.id == 1).values(n=Row.n + 1))
        return {"ok": True}

    return app


@asynccontextmanager
async def fault_client(
    settings: DatabaseSettings, meeting: Rendezvous
) -> AsyncIterator[httpx.AsyncClient]:
    """The fault app started, an HTTP client to it; every connection back at the end."""
    app = build_app(settings, meeting)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield client
        await assert_pool_idle(app.state.fastapi_dbpool)
    gc.collect()
