"""The session dependencies typed as SQLModel's sessions, for apps whose models are SQLModel.

The same dependencies as the top-level aliases (same commit before the response, same
pool), annotated with ``sqlmodel.ext.asyncio.session.AsyncSession`` and
``sqlmodel.Session`` so that type checkers know ``session.exec()``::

    from fastapi_dbpool.sqlmodel import SessionDep, SyncSessionDep
    from sqlmodel import select

    @app.get("/heroes")
    async def heroes(session: SessionDep) -> list[Hero]:
        return list(await session.exec(select(Hero)))

The Database makes SQLModel sessions when the app's models are SQLModel models, or
when told so: ``Database(session_class=AsyncSession)`` with SQLModel's class (the sync
class then defaults to ``sqlmodel.Session``). An app that uses these aliases while its
Database makes SQLAlchemy's sessions (it also maps tables outside ``SQLModel.metadata``)
fails at start, with a message naming ``session_class=``, instead of raising
AttributeError at the first ``.exec()``. Importing this module requires ``sqlmodel``.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends
from sqlmodel import Session
from sqlmodel.ext.asyncio.session import AsyncSession
from starlette.requests import HTTPConnection

from .request.dependencies import _read_session, _session
from .request.routes import mark_dependency
from .request.sync import _sync_read_session, _sync_session

__all__ = ["ReadSessionDep", "SessionDep", "SyncReadSessionDep", "SyncSessionDep"]


def _typed(
    dependency: Callable[[HTTPConnection], Any],
    alias: str,
    session_class: type,
    *,
    sync: bool,
) -> Callable[[HTTPConnection], Any]:
    """Wrap *dependency* in a function of its own, marked as *alias* for the start checks.

    The same unit of work, under a function that the app's start can tell from the
    top-level aliases' (to check that the database's sessions are *session_class*).
    """
    typed: Callable[[HTTPConnection], Any]
    if inspect.isasyncgenfunction(dependency):
        enter = asynccontextmanager(dependency)

        async def typed_unit(conn: HTTPConnection) -> AsyncIterator[Any]:
            async with enter(conn) as session:
                yield session

        typed = typed_unit
    else:

        async def typed_call(conn: HTTPConnection) -> Any:
            return await dependency(conn)

        typed = typed_call
    typed.__name__ = typed.__qualname__ = f"sqlmodel_{alias}"
    return mark_dependency(typed, alias, sync=sync, session_class=session_class)


_session_typed = _typed(_session, "SessionDep", AsyncSession, sync=False)
_read_session_typed = _typed(_read_session, "ReadSessionDep", AsyncSession, sync=False)
_sync_session_typed = _typed(_sync_session, "SyncSessionDep", Session, sync=True)
_sync_read_session_typed = _typed(_sync_read_session, "SyncReadSessionDep", Session, sync=True)

#: The request's SQLModel ``AsyncSession`` (see :data:`fastapi_dbpool.SessionDep`).
SessionDep = Annotated[AsyncSession, Depends(_session_typed, scope="function")]
#: A read-only SQLModel ``AsyncSession`` (see :data:`fastapi_dbpool.ReadSessionDep`).
ReadSessionDep = Annotated[AsyncSession, Depends(_read_session_typed, scope="function")]
#: The request's SQLModel ``Session`` for ``def`` endpoints (see ``SyncSessionDep``).
SyncSessionDep = Annotated[Session, Depends(_sync_session_typed, scope="function")]
#: A read-only SQLModel ``Session`` for ``def`` endpoints.
SyncReadSessionDep = Annotated[Session, Depends(_sync_read_session_typed, scope="function")]
