"""FastAPI dependencies: the request's session, its read-only twin, and the Database.

``SessionDep`` gives each request its own ``AsyncSession``. The dependency is
*function-scoped* (``Depends(..., scope="function")``): its exit runs when the path
operation has returned and its response has been serialised, but before the first
byte of the response is sent. That is where it commits, so

* a handler that returns normally is answered only after its data is committed;
* a handler that raises (``HTTPException`` included) rolls back;
* a commit that fails becomes an error response (409, 503, …), never a 2xx for data
  that was not saved;
* the connection is back in the pool before the response body is sent, so a slow
  client or a background task does not hold it.

With FastAPI's default request scope the exit would run after the response was sent:
the client could get 201 for a row that a failed commit never wrote.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import HTTPConnection

from ._direct import DirectConnection, close_direct
from .database import Database
from .errors import DatabaseNotStarted
from .leaks import endpoint_context

__all__ = [
    "ConnectionDep",
    "DatabaseDep",
    "ReadConnectionDep",
    "ReadSessionDep",
    "SessionDep",
    "get_connection",
    "get_database",
    "get_read_connection",
    "get_read_session",
    "get_session",
]


def get_database(conn: HTTPConnection) -> Database:
    """Return the :class:`Database` installed on the request's app."""
    database: Database | None = getattr(conn.app.state, "fastapi_dbpool", None)
    if database is None:
        raise DatabaseNotStarted("no Database installed on this app: call Database.install(app)")
    return database


async def get_session(conn: HTTPConnection) -> AsyncIterator[AsyncSession]:
    """Yield the request's session; commit after the handler, roll back if it raised."""
    with endpoint_context(conn):
        async with get_database(conn).session() as session:
            yield session


async def get_read_session(conn: HTTPConnection) -> AsyncIterator[AsyncSession]:
    """Yield a read-only session: no SQLite write lock, READ ONLY on PostgreSQL."""
    with endpoint_context(conn):
        async with get_database(conn).session(read_only=True) as session:
            yield session


DatabaseDep = Annotated[Database, Depends(get_database)]
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
ReadSessionDep = Annotated[AsyncSession, Depends(get_read_session, scope="function")]


# The two direct dependencies do what ``Database.connection()`` does, inline: on the
# hottest endpoints a context manager inside the generator costs a measurable share.


async def get_connection(conn: HTTPConnection) -> AsyncIterator[DirectConnection]:
    """Yield the request's direct connection; commit after the handler, roll back if it raised."""
    connection = get_database(conn)._new_direct(read_only=False)
    try:
        yield connection
    except BaseException:
        await close_direct(connection, commit=False)
        raise
    await close_direct(connection, commit=True)


async def get_read_connection(conn: HTTPConnection) -> AsyncIterator[DirectConnection]:
    """Yield a read-only direct connection: selects only, each without BEGIN/ROLLBACK."""
    database = get_database(conn)
    if database.replica is not None:
        # The replica's routing and fallback live in Database.connection().
        async with database.connection(read_only=True) as routed:
            yield routed
        return
    connection = database._new_direct(read_only=True)
    try:
        yield connection
    finally:
        await close_direct(connection, commit=False)  # nothing to commit: selects only


# The fast path for hot endpoints (see DirectConnection); function-scoped like SessionDep,
# so the commit happens before the response is sent.
ConnectionDep = Annotated[DirectConnection, Depends(get_connection, scope="function")]
ReadConnectionDep = Annotated[DirectConnection, Depends(get_read_connection, scope="function")]
