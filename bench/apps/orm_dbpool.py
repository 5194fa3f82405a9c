"""The ORM app's handlers, unchanged, on fastapi_dbpool's ``SessionDep``.

What a user who adopts the library and keeps their ORM code gets: the same
``session.get`` / ``session.add`` handlers as ``orm_async``, with the library's pool,
session unit of work and observability instead of a plain ``async_sessionmaker``
dependency. Background work opens its sessions with ``database.session()``.
"""

from __future__ import annotations

from fastapi import FastAPI

from fastapi_dbpool import Database, DatabaseSettings, SessionDep

from .common import DATABASE_URL, POOL_SIZE, freeze_startup_heap
from .orm_async import orm_routes

database = Database(DatabaseSettings(url=DATABASE_URL, pool_size=POOL_SIZE, max_overflow=0))
app = freeze_startup_heap(FastAPI())
database.install(app)
app.include_router(orm_routes(SessionDep, database.session))
