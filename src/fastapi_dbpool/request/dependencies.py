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

The functions behind the aliases are private on purpose: the aliases are the only way
to ask for them. They are plain ``async def`` functions that put the unit's end on
FastAPI's function-scoped exit stack themselves (cheaper than a ``yield`` dependency),
so however they are declared the commit runs before the response, never after it.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import Annotated, TypeVar

from fastapi import Depends
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import HTTPConnection

from .._app import database_of
from ..errors import DBPoolError
from ..observe.leaks import note_endpoint
from .direct import DirectConnection

__all__ = [
    "ConnectionDep",
    "ReadConnectionDep",
    "ReadSessionDep",
    "SessionDep",
]

T = TypeVar("T")

# FastAPI's exit stack for function-scoped dependencies: it is closed once the path
# operation has returned and its response is serialised, before the response is sent.
_FUNCTION_STACK = "fastapi_function_astack"


async def _for_this_request(conn: HTTPConnection, unit: AbstractAsyncContextManager[T]) -> T:
    """Enter *unit* now and end it where FastAPI ends function-scoped dependencies.

    What a ``yield`` dependency with ``scope="function"`` does, without its machinery
    (a generator, a context-manager wrapper and an anyio cancel scope per request):
    the unit's exit goes straight onto the function-scoped exit stack, so it runs at
    the same moment and sees the handler's exception, if any. The exit needs no cancel
    scope of FastAPI's: every unit's cleanup already runs shielded in a task of its own
    (:func:`~fastapi_dbpool.pool.cleanup.run_to_completion`).
    """
    stack = conn.scope.get(_FUNCTION_STACK)
    if not isinstance(stack, AsyncExitStack):
        raise DBPoolError(
            "the database dependencies need FastAPI's function-scoped dependencies "
            "(FastAPI >= 0.121): no function exit stack in this request's scope"
        )
    stack.callback(note_endpoint(conn))
    return await stack.enter_async_context(unit)


async def _session(conn: HTTPConnection) -> AsyncSession:
    return await _for_this_request(conn, database_of(conn.app).session())


async def _read_session(conn: HTTPConnection) -> AsyncSession:
    return await _for_this_request(conn, database_of(conn.app).session(read_only=True))


async def _connection(conn: HTTPConnection) -> DirectConnection:
    return await _for_this_request(conn, database_of(conn.app).connection())


async def _read_connection(conn: HTTPConnection) -> DirectConnection:
    return await _for_this_request(conn, database_of(conn.app).connection(read_only=True))


# The functions above are not generators, so FastAPI's scope makes no difference to
# them; "function" is kept to say when the unit ends, should they ever become one.
#: The request's ``AsyncSession``: committed before the response, rolled back on error.
SessionDep = Annotated[AsyncSession, Depends(_session, scope="function")]
#: A read-only ``AsyncSession``: no SQLite write lock, READ ONLY on PostgreSQL, the replica
#: when there is one.
ReadSessionDep = Annotated[AsyncSession, Depends(_read_session, scope="function")]
#: The fast path: a :class:`DirectConnection` for Core statements, committed like SessionDep.
ConnectionDep = Annotated[DirectConnection, Depends(_connection, scope="function")]
#: A read-only :class:`DirectConnection`: selects only, each without BEGIN/ROLLBACK.
ReadConnectionDep = Annotated[DirectConnection, Depends(_read_connection, scope="function")]
