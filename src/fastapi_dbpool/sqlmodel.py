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
when told so: ``Database(session_class=AsyncSession, sync_session_class=Session)``
with SQLModel's classes. Importing this module requires ``sqlmodel``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from sqlmodel import Session
from sqlmodel.ext.asyncio.session import AsyncSession

from .request.dependencies import _read_session, _session
from .request.sync import _sync_read_session, _sync_session

__all__ = ["ReadSessionDep", "SessionDep", "SyncReadSessionDep", "SyncSessionDep"]

#: The request's SQLModel ``AsyncSession`` (see :data:`fastapi_dbpool.SessionDep`).
SessionDep = Annotated[AsyncSession, Depends(_session, scope="function")]
#: A read-only SQLModel ``AsyncSession`` (see :data:`fastapi_dbpool.ReadSessionDep`).
ReadSessionDep = Annotated[AsyncSession, Depends(_read_session, scope="function")]
#: The request's SQLModel ``Session`` for ``def`` endpoints (see ``SyncSessionDep``).
SyncSessionDep = Annotated[Session, Depends(_sync_session, scope="function")]
#: A read-only SQLModel ``Session`` for ``def`` endpoints.
SyncReadSessionDep = Annotated[Session, Depends(_sync_read_session, scope="function")]
