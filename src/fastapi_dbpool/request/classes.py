"""Which session classes a Database makes: SQLAlchemy's, SQLModel's, or the app's own.

``Database(session_class=..., sync_session_class=...)`` names them; given SQLModel's
``AsyncSession`` alone, the sync class is SQLModel's ``Session``. When neither is given
and the app's models are SQLModel models (when the database starts, ``sqlmodel`` is
imported and every mapped table is in ``SQLModel.metadata``), SQLModel's sessions are
used, so that ``.exec()`` works on every session dependency; otherwise SQLAlchemy's.
A process that maps SQLAlchemy and SQLModel classes side by side gets SQLAlchemy's:
name the classes there (an app on the aliases of :mod:`fastapi_dbpool.sqlmodel` that
does not fails at start, see :mod:`.routes`). SQLModel's classes subclass SQLAlchemy's,
so nothing else changes.
"""

from __future__ import annotations

import sys
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from .._compat import mapped_metadata

__all__ = ["SessionClasses", "session_classes"]

SessionClasses = tuple[type[AsyncSession], type[Session]]


def session_classes(
    async_class: type[AsyncSession] | None, sync_class: type[Session] | None
) -> SessionClasses:
    """The (async, sync) session classes: the ones given, else detected as above.

    Raises:
        TypeError: a class given is not a subclass of SQLAlchemy's ``AsyncSession``
            (*async_class*) or ``Session`` (*sync_class*).
    """
    if async_class is not None and not _subclass(async_class, AsyncSession):
        raise TypeError(
            f"session_class must be a subclass of sqlalchemy.ext.asyncio.AsyncSession, "
            f"not {async_class!r}"
        )
    if sync_class is not None and not _subclass(sync_class, Session):
        raise TypeError(
            f"sync_session_class must be a subclass of sqlalchemy.orm.Session, not {sync_class!r}"
        )
    if sync_class is None:
        sqlmodel = _sqlmodel_classes(detect=async_class is None)
        if sqlmodel is not None and (async_class is None or issubclass(async_class, sqlmodel[0])):
            return async_class or sqlmodel[0], sqlmodel[1]
    return async_class or AsyncSession, sync_class or Session


def _subclass(cls: Any, base: type) -> bool:
    return isinstance(cls, type) and issubclass(cls, base)


def _sqlmodel_classes(*, detect: bool) -> SessionClasses | None:
    """SQLModel's sessions; with *detect*, only if every mapped table is SQLModel's.

    Never imports sqlmodel: an app that has not imported it does not use it.
    """
    if "sqlmodel" not in sys.modules:
        return None
    from sqlmodel import Session as SQLModelSession
    from sqlmodel import SQLModel
    from sqlmodel.ext.asyncio.session import AsyncSession as SQLModelAsyncSession

    if detect:
        metadata = mapped_metadata()
        if not metadata or any(each is not SQLModel.metadata for each in metadata):
            return None
    return SQLModelAsyncSession, SQLModelSession
