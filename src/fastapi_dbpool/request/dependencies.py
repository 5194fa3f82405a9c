"""The request's database handles, as FastAPI dependency aliases.

Each alias is ``Annotated[T, Depends(..., scope="function")]``: the dependency's exit
runs when the path operation has returned and its response has been serialised, but
before the first byte of the response is sent. That is where the unit of work commits,
so

* a handler that returns normally is answered only after its data is committed;
* a handler that raises (``HTTPException`` included) rolls back;
* a commit that fails becomes an error response (409, 503, …), never a 2xx for data
  that was not saved;
* the connection is back in the pool before the response body is sent, so a slow
  client or a background task does not hold it.

The functions behind the aliases are private on purpose. With FastAPI's default
request scope (``Depends(get_session)``) the exit would run after the response was
sent, and the client could get 201 for a row that a failed commit never wrote: the
aliases are the only way to ask for them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import HTTPConnection

from .._app import database_of
from ..observe.leaks import endpoint_context
from .direct import DirectConnection

__all__ = [
    "ConnectionDep",
    "ReadConnectionDep",
    "ReadSessionDep",
    "SessionDep",
]


async def _session(conn: HTTPConnection) -> AsyncIterator[AsyncSession]:
    with endpoint_context(conn):
        async with database_of(conn.app).session() as session:
            yield session


async def _read_session(conn: HTTPConnection) -> AsyncIterator[AsyncSession]:
    with endpoint_context(conn):
        async with database_of(conn.app).session(read_only=True) as session:
            yield session


async def _connection(conn: HTTPConnection) -> AsyncIterator[DirectConnection]:
    with endpoint_context(conn):
        async with database_of(conn.app).connection() as connection:
            yield connection


async def _read_connection(conn: HTTPConnection) -> AsyncIterator[DirectConnection]:
    with endpoint_context(conn):
        async with database_of(conn.app).connection(read_only=True) as connection:
            yield connection


#: The request's ``AsyncSession``: committed before the response, rolled back on error.
SessionDep = Annotated[AsyncSession, Depends(_session, scope="function")]
#: A read-only ``AsyncSession``: no SQLite write lock, READ ONLY on PostgreSQL, the replica
#: when there is one.
ReadSessionDep = Annotated[AsyncSession, Depends(_read_session, scope="function")]
#: The fast path: a :class:`DirectConnection` for Core statements, committed like SessionDep.
ConnectionDep = Annotated[DirectConnection, Depends(_connection, scope="function")]
#: A read-only :class:`DirectConnection`: selects only, each without BEGIN/ROLLBACK.
ReadConnectionDep = Annotated[DirectConnection, Depends(_read_connection, scope="function")]
